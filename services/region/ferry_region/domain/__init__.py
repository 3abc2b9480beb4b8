"""Domain logic of the region: servers, hosts, images and task queries."""
