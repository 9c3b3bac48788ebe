"""The napari layer of napari-unet: widgets, workers, reader, writer and sample data (Qt lives only here)."""
