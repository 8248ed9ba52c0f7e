"""Generated from proto/consortium/v1/ledger.proto by scripts/gen-proto. DO NOT EDIT."""
