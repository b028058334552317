"""Operations: Prometheus metrics, logging (with redaction), the glibc allocator settings."""
