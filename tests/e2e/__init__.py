"""End-to-end tests: real validator processes, gRPC over TLS, PostgreSQL and signatures."""
