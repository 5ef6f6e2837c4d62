#include "reflection.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>

#include <set>

#include "grpc/reflection/v1/reflection.pb.h"
#include "status.h"

namespace listseg::front {

const char kReflectionV1[] = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
const char kReflectionV1Alpha[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

namespace {

namespace pb = google::protobuf;
namespace rv1 = grpc::reflection::v1;

constexpr int kNotFound = 5;  // grpc::StatusCode::NOT_FOUND, as the reflection protocol reports it

// A file and every file it imports, each once per answer, as grpc's own reflection sends them.
void add_file(const pb::FileDescriptor* file, std::set<std::string>* sent, rv1::FileDescriptorResponse* out) {
  if (!sent->insert(file->name()).second) return;
  pb::FileDescriptorProto proto;
  file->CopyTo(&proto);
  proto.SerializeToString(out->add_file_descriptor_proto());
  for (int i = 0; i < file->dependency_count(); i++) add_file(file->dependency(i), sent, out);
}

class Stream final : public grpc::ServerGenericBidiReactor {
 public:
  explicit Stream(const std::vector<std::string>& services) : services_(services) { StartRead(&in_); }

  void OnReadDone(bool ok) override {
    if (!ok) return Finish(grpc::Status::OK);  // the client closed its side: done
    rv1::ServerReflectionRequest req;
    grpc::Slice whole;
    if (!in_.DumpToSingleSlice(&whole).ok() || !req.ParseFromArray(whole.begin(), int(whole.size())))
      return Finish(error(grpc::StatusCode::INVALID_ARGUMENT, "not a ServerReflectionRequest", "INVALID_ARGUMENT",
                          {{"field", "request"}}));
    std::string bytes = answer(req).SerializeAsString();
    grpc::Slice slice(bytes);
    out_ = grpc::ByteBuffer(&slice, 1);
    StartWrite(&out_);
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(error(grpc::StatusCode::CANCELLED, "the stream ended", "CANCELLED"));
    StartRead(&in_);
  }
  void OnDone() override { delete this; }

 private:
  rv1::ServerReflectionResponse answer(const rv1::ServerReflectionRequest& req) {
    const pb::DescriptorPool* pool = pb::DescriptorPool::generated_pool();
    rv1::ServerReflectionResponse resp;
    resp.set_valid_host(req.host());
    *resp.mutable_original_request() = req;
    const pb::FileDescriptor* file = nullptr;
    switch (req.message_request_case()) {
      case rv1::ServerReflectionRequest::kListServices:
        for (const auto& name : services_) resp.mutable_list_services_response()->add_service()->set_name(name);
        return resp;
      case rv1::ServerReflectionRequest::kFileByFilename:
        file = pool->FindFileByName(req.file_by_filename());
        break;
      case rv1::ServerReflectionRequest::kFileContainingSymbol:
        file = pool->FindFileContainingSymbol(req.file_containing_symbol());
        break;
      case rv1::ServerReflectionRequest::kFileContainingExtension: {
        const auto* type = pool->FindMessageTypeByName(req.file_containing_extension().containing_type());
        const auto* ext =
            type ? pool->FindExtensionByNumber(type, req.file_containing_extension().extension_number()) : nullptr;
        if (ext) file = ext->file();
        break;
      }
      case rv1::ServerReflectionRequest::kAllExtensionNumbersOfType: {
        const auto* type = pool->FindMessageTypeByName(req.all_extension_numbers_of_type());
        if (!type) return not_found(resp, "no such type");
        std::vector<const pb::FieldDescriptor*> exts;
        pool->FindAllExtensions(type, &exts);
        auto* numbers = resp.mutable_all_extension_numbers_response();
        numbers->set_base_type_name(type->full_name());
        for (const auto* e : exts) numbers->add_extension_number(e->number());
        return resp;
      }
      default:
        return not_found(resp, "unknown request");
    }
    if (!file) return not_found(resp, "not found");
    std::set<std::string> sent;
    add_file(file, &sent, resp.mutable_file_descriptor_response());
    return resp;
  }
  static rv1::ServerReflectionResponse& not_found(rv1::ServerReflectionResponse& resp, const char* message) {
    resp.mutable_error_response()->set_error_code(kNotFound);
    resp.mutable_error_response()->set_error_message(message);
    return resp;
  }

  const std::vector<std::string>& services_;
  grpc::ByteBuffer in_, out_;
};

}  // namespace

grpc::ServerGenericBidiReactor* reflection_stream(const std::vector<std::string>& services) {
  return new Stream(services);
}

}  // namespace listseg::front
