"""segearth: geospatial pixel reasoning as a framework of swappable, registered components."""
