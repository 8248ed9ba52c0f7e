"""User-facing programs (the `consortium` command), thin over the `consortium` library."""
