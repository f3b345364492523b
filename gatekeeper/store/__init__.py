"""What a gate keeps on disk: built artifacts under a fingerprint (state folder), the embedding cache,
the tuning file beside the catalog, and atomic writes."""
