"""listseg: custom list segments as a service. This folder is the `listseg` package.

`from listseg import Client` gives the gRPC client; it is loaded lazily so that importing the engine
(`listseg.core`) never imports gRPC.
"""


def __getattr__(name):
    if name in ("Client", "ListsegError"):
        from listseg.clients import client
        return getattr(client, name)
    raise AttributeError(name)
