"""Generated gRPC stubs (make generates them from proto/listseg/v1/)."""
