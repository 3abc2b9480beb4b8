"""The Ferry test guest: an OS-less boot sector that dirties memory and
prints heartbeats on COM1, used to prove a guest survived a migration.

Build it with `ferry_host.testguest.build.build_image()` or the
`ferry-testguest` command; the source is `guest.asm` in this package.
"""
