"""The data contract: Arrow schemas, validated Parquet I/O, importers, the temporal split and statistics."""
