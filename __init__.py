"""listseg: custom list segments as a service. This folder is the `listseg` package.

`from listseg import Client` gives the gRPC client; it is loaded lazily so that importing the engine
(`listseg.core`) never imports gRPC.
"""


def __getattr__(name):
    if name in ("Client", "CallError"):
        from listseg.clients import client
        return getattr(client, name)
    if name == "ListsegError":          # no alias: see README "From Python"
        raise AttributeError("listseg.ListsegError is now listseg.CallError, the error of a failed call "
                             "(the engine's errors are listseg.core.errors.ListsegError)")
    raise AttributeError(name)
