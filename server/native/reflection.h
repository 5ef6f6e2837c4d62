// Server reflection, v1 and v1alpha, from the binary's generated descriptor pool.
//
// grpc C++ 1.51 (Debian's) serves only v1alpha, and only the files its plugin was told of, so the
// front's health service and the ErrorInfo in its errors could not be resolved. The two versions'
// messages are the same on the wire, so one stream answers both method names.
#pragma once

#include <grpcpp/generic/async_generic_service.h>

#include <string>
#include <vector>

namespace listseg::front {

extern const char kReflectionV1[];       // full method names this answers
extern const char kReflectionV1Alpha[];

// One ServerReflectionInfo stream; deletes itself when done. `services` is what list_services shows.
grpc::ServerGenericBidiReactor* reflection_stream(const std::vector<std::string>& services);

}  // namespace listseg::front
