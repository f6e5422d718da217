"""Volume readers and writers: a filesystem tree or a block device, to and from a repository."""
