"""The wire: protobuf messages (fedsec.proto and its committed generated code),
the array container (dtype + shape + raw bytes, never pickle) and chunked streams."""
