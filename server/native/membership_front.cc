// listseg-front: the Membership service in native code, for campaign engines' single look-ups.
//
// A Python gRPC server spends ~110 us of CPU on each unary call, most of it in grpcio's own
// machinery (docs/performance.md); this front spends ~30. It answers IsMember itself, from the
// server's store read directly (source.h: the LMDB files, or the Redis Cluster), exactly as
// core/members.py does. It relays to the Python server every other Membership call, and every
// IsMember it cannot answer exactly: an error of any kind, and credentials it has not yet seen the
// server accept. So the server stays the one place that decides what an error or an account means.
//
// Usage: listseg-front --listen HOST:PORT --backend HOST:PORT
//                      (--data DIR | --redis-cluster HOST:PORT,... | --redis HOST:PORT)
//                      [--redis-auth-stdin] [--listen-is-loopback] [--tls-cert PEM --tls-key PEM]
//                      [--backend-ca PEM]
// --redis-auth-stdin: a Redis ACL user and password are the first two lines of stdin (the user empty
// for none), not in a command line others can read.
// Beside Membership it serves health (listseg.v1.Membership and "") and reflection v1 and v1alpha.
// Prints one JSON line with the bound port once serving; SIGTERM stops it. It also stops when the
// process that started it dies (PR_SET_PDEATHSIG), so it never outlives `listseg serve`.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "layout.h"
#include "lmdb_source.h"
#include "redis_source.h"
#include "listseg/v1/listseg.grpc.pb.h"
#include "reflection.h"
#include "status.h"

namespace v1 = listseg::v1;
using listseg::front::Answer;
using listseg::front::error;
using listseg::front::SegmentRef;
using listseg::front::Source;

namespace {

// Requests as big as the server's grpc takes (server/decoding.py MAX_TRANSPORT_MESSAGE): the server
// refuses those over its own limit with an ErrorInfo, which grpc's refusal here would lack.
constexpr int kMaxReceive = 16 << 20;
constexpr int kMaxSend = 64 << 20;
std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Credentials the Python server has accepted: account id -> SHA-256 of "id\0passcode", as
// core/accounts.py remembers them (passcodes are never changed, only created).
class Verified {
 public:
  static std::string digest(const std::string& account, const std::string& passcode) {
    std::string text = account + '\0' + passcode;
    unsigned char out[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), out);
    return std::string(reinterpret_cast<char*>(out), sizeof out);
  }
  bool known(const std::string& account, const std::string& passcode) {
    std::string d = digest(account, passcode);
    std::lock_guard<std::mutex> hold(lock_);
    auto it = digests_.find(account);
    return it != digests_.end() && CRYPTO_memcmp(it->second.data(), d.data(), d.size()) == 0;
  }
  void remember(const std::string& account, const std::string& passcode) {
    std::string d = digest(account, passcode);
    std::lock_guard<std::mutex> hold(lock_);
    digests_[account] = d;
  }

 private:
  std::mutex lock_;
  std::map<std::string, std::string> digests_;
};

std::string metadata(const grpc::CallbackServerContext* ctx, const char* key) {
  auto it = ctx->client_metadata().find(key);
  return it == ctx->client_metadata().end() ? std::string() : std::string(it->second.data(), it->second.size());
}

// The service's methods take and give bytes: a relayed call is passed on as it came, unparsed, and
// a request that does not parse goes to the server too, which refuses it as INVALID_ARGUMENT (grpc
// C++ would answer UNIMPLEMENTED).
using RawMembership = v1::Membership::WithRawCallbackMethod_IsMember<v1::Membership::WithRawCallbackMethod_CheckMembers<
    v1::Membership::WithRawCallbackMethod_ListMembers<
        v1::Membership::WithRawCallbackMethod_ListMemberChanges<v1::Membership::CallbackService>>>>;

class Membership final : public RawMembership {
 public:
  Membership(Source& source, std::shared_ptr<grpc::Channel> backend) : source_(source), backend_(backend) {}

  grpc::ServerUnaryReactor* IsMember(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                     grpc::ByteBuffer* resp) override {
    if (!req->Valid()) return without_request(ctx);
    bool answered = false;
    try {
      Asked asked;
      Answer found;
      answered = parse(ctx, *req, &asked) && source_.is_member(asked.account, asked.ref, asked.guid, asked.key, &found);
      if (answered) respond(found, resp);
    } catch (const std::exception& e) {  // a store error (LMDB's reader table full, Redis failing over): the server answers
      listseg::front::complain(e.what());
    }
    if (answered) {
      auto* reactor = ctx->DefaultReactor();
      reactor->Finish(grpc::Status::OK);
      return reactor;
    }
    return relay(ctx, "/listseg.v1.Membership/IsMember", req, resp);
  }
  grpc::ServerUnaryReactor* CheckMembers(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                         grpc::ByteBuffer* resp) override {
    return relay(ctx, "/listseg.v1.Membership/CheckMembers", req, resp);
  }
  grpc::ServerUnaryReactor* ListMembers(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                        grpc::ByteBuffer* resp) override {
    return relay(ctx, "/listseg.v1.Membership/ListMembers", req, resp);
  }
  grpc::ServerUnaryReactor* ListMemberChanges(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                              grpc::ByteBuffer* resp) override {
    return relay(ctx, "/listseg.v1.Membership/ListMemberChanges", req, resp);
  }

 private:
  // What an IsMember call asks: the caller's account (the default account while no passcode
  // exists, else the named account if the server has accepted this passcode for it before), the
  // segment and the key.
  struct Asked {
    std::string account, key;
    SegmentRef ref;
    bool guid;
  };

  // False for a call only the server can answer.
  bool parse(const grpc::CallbackServerContext* ctx, const grpc::ByteBuffer& raw_request, Asked* out) {
    v1::IsMemberRequest req;
    grpc::Slice whole;
    if (!raw_request.TrySingleSlice(&whole).ok() && !raw_request.DumpToSingleSlice(&whole).ok()) return false;
    if (!req.ParseFromArray(whole.begin(), int(whole.size()))) return false;
    if (req.type() != v1::IDENTITY_TYPE_GUID && req.type() != v1::IDENTITY_TYPE_IDENTITY) return false;
    out->guid = req.type() == v1::IDENTITY_TYPE_GUID;
    out->key = strip(req.identity());
    if (out->key.empty() || !listseg::front::parse_segment_ref(req.segment(), &out->ref)) return false;
    out->account = LISTSEG_DEFAULT_ACCOUNT;
    if (source_.credentials_required()) {
      out->account = metadata(ctx, "x-account-id");
      if (out->account.empty() || !verified_.known(out->account, metadata(ctx, "x-passcode"))) return false;
    }
    return true;
  }

  static void respond(const Answer& found, grpc::ByteBuffer* out) {
    v1::IsMemberResponse resp;
    resp.set_member(found.member);
    resp.set_version(found.version);
    std::string bytes = resp.SerializeAsString();
    grpc::Slice slice(bytes);
    *out = grpc::ByteBuffer(&slice, 1);
  }

  static std::string strip(const std::string& s) {
    size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  }

  // One relayed call: the server side's reactor owns the call to the Python server, so that a
  // caller who cancels cancels that call too. grpc calls OnDone last, after the relay has finished.
  class Relay : public grpc::ServerUnaryReactor {
   public:
    void OnCancel() override { call.TryCancel(); }
    void OnDone() override { delete this; }
    grpc::ClientContext call;
  };

  // grpc runs a raw method with no buffer at all when the call ended before its request came (a
  // deadline of a millisecond, a cancel) or the caller half-closed without one. Relaying that
  // buffer aborts the process (GRPC_CALL_ERROR_INVALID_MESSAGE), so it is answered here.
  static grpc::ServerUnaryReactor* without_request(grpc::CallbackServerContext* ctx) {
    auto* reactor = ctx->DefaultReactor();
    if (ctx->deadline() <= std::chrono::system_clock::now())
      reactor->Finish(error(grpc::StatusCode::DEADLINE_EXCEEDED, "the deadline passed before the request came",
                            "DEADLINE_EXCEEDED"));
    else
      reactor->Finish(error(grpc::StatusCode::INVALID_ARGUMENT, "the call carried no request message",
                            "INVALID_ARGUMENT", {{"field", "request"}}));
    return reactor;
  }

  // The call as it came, to the Python server; its answer, status and error details as they come back.
  grpc::ServerUnaryReactor* relay(grpc::CallbackServerContext* ctx, const char* method, const grpc::ByteBuffer* req,
                                  grpc::ByteBuffer* resp) {
    if (!req->Valid()) return without_request(ctx);
    auto* relay = new Relay();
    for (const auto& [k, v] : ctx->client_metadata()) {
      std::string key(k.data(), k.size());
      if (key[0] != ':' && key.rfind("grpc-", 0) != 0 && key != "user-agent" && key != "content-type")
        relay->call.AddMetadata(key, std::string(v.data(), v.size()));
    }
    relay->call.set_deadline(ctx->deadline());
    std::string account = metadata(ctx, "x-account-id"), passcode = metadata(ctx, "x-passcode");
    backend_.UnaryCall(&relay->call, method, {}, req, resp, [this, relay, account, passcode](grpc::Status s) {
      // Only while passcodes are required: in dev mode the server accepts any metadata.
      try {
        if (s.ok() && !account.empty() && source_.credentials_required()) verified_.remember(account, passcode);
      } catch (const std::exception&) {  // the store unreachable: remember nothing
      }
      relay->Finish(s.ok() || !s.error_details().empty() ? s : made_by_grpc(s));
    });
    return relay;
  }

  // A status grpc made on the way (the server unreachable, the deadline) carries no ErrorInfo: add one.
  static grpc::Status made_by_grpc(const grpc::Status& s) {
    const char* reason = s.error_code() == grpc::StatusCode::UNAVAILABLE         ? "SERVER_UNAVAILABLE"
                         : s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ? "DEADLINE_EXCEEDED"
                         : s.error_code() == grpc::StatusCode::CANCELLED         ? "CANCELLED"
                         : s.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? "MESSAGE_TOO_LARGE"
                                                                                  : "RELAY_FAILED";
    return error(s.error_code(), s.error_message(), reason);
  }

  Source& source_;
  grpc::GenericStub backend_;
  Verified verified_;
};

// Server reflection (both versions), and for any other method but Membership's and health's,
// UNIMPLEMENTED saying where to call instead.
class OtherMethods final : public grpc::CallbackGenericService {
 public:
  explicit OtherMethods(std::string backend) : backend_(std::move(backend)) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() == listseg::front::kReflectionV1 || ctx->method() == listseg::front::kReflectionV1Alpha)
      return listseg::front::reflection_stream(kServices);
    class Refusal : public grpc::ServerGenericBidiReactor {
     public:
      explicit Refusal(const grpc::Status& status) { Finish(status); }
      void OnDone() override { delete this; }
    };
    return new Refusal(error(grpc::StatusCode::UNIMPLEMENTED,
                             "this is listseg's membership front: it serves listseg.v1.Membership only; call " +
                                 ctx->method() + " on the server, " + backend_,
                             "NOT_ON_FRONT", {{"server", backend_}, {"method", ctx->method()}}));
  }

  static const std::vector<std::string> kServices;  // what reflection lists

 private:
  std::string backend_;
};

const std::vector<std::string> OtherMethods::kServices = {
    v1::Membership::service_full_name(), "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection"};

struct Args {
  std::string listen, backend, data, redis_cluster, redis, tls_cert, tls_key, backend_ca;
  bool loopback = false;  // --listen-is-loopback: listseg serve says the listen address is loopback
  bool redis_auth_stdin = false;
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::string*> flags = {
      {"--listen", &a.listen},     {"--backend", &a.backend}, {"--data", &a.data},
      {"--redis", &a.redis},       {"--redis-cluster", &a.redis_cluster},
      {"--tls-cert", &a.tls_cert}, {"--tls-key", &a.tls_key}, {"--backend-ca", &a.backend_ca}};
  for (int i = 1; i < argc; i++) {
    std::map<std::string, bool*> switches = {{"--listen-is-loopback", &a.loopback},
                                             {"--redis-auth-stdin", &a.redis_auth_stdin}};
    if (switches.count(argv[i])) {
      *switches[argv[i]] = true;
      continue;
    }
    auto it = flags.find(argv[i]);
    if (it == flags.end() || i + 1 >= argc) throw std::runtime_error(std::string("unknown or empty flag ") + argv[i]);
    *it->second = argv[++i];
  }
  if (a.listen.empty() || a.backend.empty()) throw std::runtime_error("--listen and --backend are required");
  if (!a.data.empty() + !a.redis_cluster.empty() + !a.redis.empty() != 1)
    throw std::runtime_error("one store: --data, --redis-cluster or --redis");
  if (a.tls_cert.empty() != a.tls_key.empty()) throw std::runtime_error("--tls-cert and --tls-key go together");
  return a;
}

std::unique_ptr<Source> open_source(const Args& args) {
  if (!args.data.empty()) return listseg::front::open_lmdb(args.data);
  std::vector<std::string> seeds;
  std::stringstream list(args.redis.empty() ? args.redis_cluster : args.redis);
  for (std::string seed; std::getline(list, seed, ',');)
    if (!seed.empty()) seeds.push_back(seed);
  std::string user, password;
  if (args.redis_auth_stdin) {
    std::getline(std::cin, user);
    std::getline(std::cin, password);
  }
  return listseg::front::open_redis(seeds, args.redis.empty(), user, password);
}

int run(const Args& args) {
  std::unique_ptr<Source> source = open_source(args);
  // As the server: with no passcode anywhere, every caller is the default account, so only this
  // machine may call. Which hosts are loopback is server/addresses.py's rule, told by a flag.
  if (!args.loopback && !source->credentials_required())
    throw std::runtime_error("no account exists, so the front listens only on a loopback address; create one with "
                             "`listseg accounts create NAME` to listen on " + args.listen);
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(kMaxSend);
  channel_args.SetMaxSendMessageSize(kMaxReceive);
  std::shared_ptr<grpc::ChannelCredentials> backend_creds = grpc::InsecureChannelCredentials();
  if (!args.backend_ca.empty()) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = read_file(args.backend_ca);
    backend_creds = grpc::SslCredentials(ssl);
  }
  Membership service(*source, grpc::CreateCustomChannel(args.backend, backend_creds, channel_args));

  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!args.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({read_file(args.tls_key), read_file(args.tls_cert)});
    creds = grpc::SslServerCredentials(ssl);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(args.listen, creds, &port);
  builder.SetMaxReceiveMessageSize(kMaxReceive);
  builder.SetMaxSendMessageSize(kMaxSend);
  // grpc 1.51's own deadline filter ends a call that ran out of time, and the reactor's Finish then
  // ends the same stream a second time (trailers after END_STREAM), which h2 clients such as grpclib
  // take as a broken connection, failing every call on it. The front keeps each deadline itself:
  // a relayed call carries it to the server, and the answers it makes itself take microseconds.
  builder.AddChannelArgument(GRPC_ARG_ENABLE_DEADLINE_CHECKS, 0);
  builder.RegisterService(&service);
  OtherMethods others(args.backend);
  builder.RegisterCallbackGenericService(&others);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || !port) {
    std::fprintf(stderr, "listseg-front: cannot listen on %s\n", args.listen.c_str());
    return 1;
  }
  server->GetHealthCheckService()->SetServingStatus(v1::Membership::service_full_name(), true);
  std::printf("{\"msg\": \"front serving\", \"listen\": \"%s\", \"port\": %d, \"pid\": %d}\n", args.listen.c_str(),
              port, int(getpid()));
  std::fflush(stdout);

  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  int sig;
  sigwait(&stop, &sig);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Before grpc starts its threads: SIGTERM and SIGINT are taken by sigwait in run(), not delivered.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "listseg-front: %s\n", e.what());
    return 2;
  }
}
