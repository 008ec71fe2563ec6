"""Dev and test servers: the local Temporal + Redis stack, its processes and binaries."""
