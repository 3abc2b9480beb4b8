"""Image files: upload validation (qemu-img) and the on-disk store."""
