"""gRPC over mutual TLS: credentials from a kit, servers, channels, peer identity, error mapping."""
