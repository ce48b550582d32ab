"""The torrent layer: the only package that imports libtorrent."""
