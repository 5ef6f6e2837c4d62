"""listseg: custom list segments as a service. This folder is the `listseg` package."""
