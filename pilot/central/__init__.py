"""The central side: prepare the DBB for a graph, cut the graph into bundles, ingest what jobs staged."""
