"""Pure logic shared by every component: no sockets, no processes, no files.

Everything here takes data and returns data, so it is tested exhaustively without I/O.
"""
