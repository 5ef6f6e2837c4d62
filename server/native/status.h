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
// server/errors.py MAX_MESSAGE and MAX_METADATA_VALUE: a message may echo the caller's input (a method
// name of 10 KB), and clients drop a response whose headers pass 8-16 KiB, ErrorInfo and all.
constexpr size_t kMaxMessage = 1024, kMaxMetadataValue = 256;

// text cut to at most limit bytes, at a UTF-8 character boundary, "..." marking the cut
inline std::string clip(const std::string& text, size_t limit) {
  if (text.size() <= limit) return text;
  size_t end = limit - 3;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
  return text.substr(0, end) + "...";
}

// reason: one of core/errors.py REASONS (tests/test_errors.py checks every reason this front makes)
inline grpc::Status error(grpc::StatusCode code, const std::string& full_message, const std::string& reason,
                          const std::map<std::string, std::string>& metadata = {}) {
  std::string message = clip(full_message, kMaxMessage);
  google::rpc::ErrorInfo info;
  info.set_reason(reason);
  info.set_domain(kErrorDomain);
  for (const auto& [k, v] : metadata) (*info.mutable_metadata())[k] = clip(v, kMaxMetadataValue);
  google::rpc::Status status;
  status.set_code(int(code));
  status.set_message(message);
  status.add_details()->PackFrom(info);
  return grpc::Status(code, message, status.SerializeAsString());
}

}  // namespace listseg::front
