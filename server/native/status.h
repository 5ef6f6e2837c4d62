// The front's own errors, as the Python server makes them (server/errors.py): a gRPC status whose
// details are a google.rpc.Status holding one google.rpc.ErrorInfo with a stable reason.
#pragma once

#include <grpcpp/support/status.h>

#include <map>
#include <string>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace listseg::front {

constexpr char kErrorDomain[] = "listseg.dev";  // server/errors.py DOMAIN

inline grpc::Status error(grpc::StatusCode code, const std::string& message, const std::string& reason,
                          const std::map<std::string, std::string>& metadata = {}) {
  google::rpc::ErrorInfo info;
  info.set_reason(reason);
  info.set_domain(kErrorDomain);
  info.mutable_metadata()->insert(metadata.begin(), metadata.end());
  google::rpc::Status status;
  status.set_code(int(code));
  status.set_message(message);
  status.add_details()->PackFrom(info);
  return grpc::Status(code, message, status.SerializeAsString());
}

}  // namespace listseg::front
