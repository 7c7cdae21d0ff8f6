"""Labels -> files that review tools import as they are (CVAT, Label Studio, FiftyOne),
worst score first, the scores carried along as attributes."""
