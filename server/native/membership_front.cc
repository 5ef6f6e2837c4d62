// listseg-front: the Membership service in native code, for campaign engines' single look-ups.
//
// A Python gRPC server spends ~110 us of CPU on each unary call, most of it in grpcio's own
// machinery (README, "Performance"); this front spends ~30. It answers IsMember itself, reading the
// server's LMDB files in one read transaction per call, exactly as core/segments.py does: segment ->
// head version -> bitmap (cached per version; versions never change), guid or identity -> uid. It
// relays to the Python server every other Membership call, and every IsMember it cannot answer
// exactly: an error of any kind, and credentials it has not yet seen the server accept. So the server
// stays the one place that decides what an error or an account means.
//
// Usage: listseg-front --listen HOST:PORT --backend HOST:PORT --data DIR [--listen-is-loopback]
//                      [--tls-cert PEM --tls-key PEM] [--backend-ca PEM]
// Beside Membership it serves health (listseg.v1.Membership and "") and reflection v1 and v1alpha.
// Prints one JSON line with the bound port once serving; SIGTERM stops it. It also stops when the
// process that started it dies (PR_SET_PDEATHSIG), so it never outlives `listseg serve`.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <lmdb.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <roaring/roaring.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "layout.h"
#include "listseg/v1/listseg.grpc.pb.h"
#include "reflection.h"
#include "status.h"

namespace v1 = listseg::v1;
using listseg::front::error;

namespace {

constexpr size_t kMaxKey = 511;               // LMDB's default maximum key size
// Requests as big as the server's grpc takes (server/decoding.py MAX_TRANSPORT_MESSAGE): the server
// refuses those over its own limit with an ErrorInfo, which grpc's refusal here would lack.
constexpr int kMaxReceive = 16 << 20;
constexpr int kMaxSend = 64 << 20;
// Keys and values exactly as the server stores them: layout.h, generated from core/layout.py.
// A key from one of its listseg_key_* builders, into a string of the key's size.
template <typename Build, typename... Args>
std::string make_key(size_t size, Build build, Args... args) {
  std::string key(size, '\0');
  build(reinterpret_cast<uint8_t*>(&key[0]), args...);
  return key;
}

const uint8_t* bytes(const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); }

// An integer value read with layout.h's listseg_get_*, or false if the stored value is not that wide.
template <typename Get>
bool read_int(const MDB_val& v, size_t width, Get get, uint64_t* out) {
  if (v.mv_size != width) return false;
  *out = get(static_cast<const uint8_t*>(v.mv_data));
  return true;
}

// A segment of an account: its id and the key of its record and head.
struct Segment {
  std::string account;  // the account prefix
  uint32_t id;
  std::string key;
};

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// A read-only view of the server's LMDB environment (core/store.py DATABASES).
class Store {
 public:
  explicit Store(const std::string& path) {
    check(mdb_env_create(&env_), "mdb_env_create");
    check(mdb_env_set_maxdbs(env_, LISTSEG_DB_COUNT + 1), "mdb_env_set_maxdbs");
    // MDB_NOTLS: a read transaction belongs to the call, not to the thread grpc runs it on.
    check(mdb_env_open(env_, path.c_str(), MDB_RDONLY | MDB_NOTLS, 0644), "mdb_env_open " + path);
    MDB_txn* txn;             // committed, not aborted: that keeps the handles for later transactions
    check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn), "mdb_txn_begin");
    accounts_ = open(txn, LISTSEG_DB_ACCOUNTS);
    guid_ = open(txn, LISTSEG_DB_GUID);
    ident_ = open(txn, LISTSEG_DB_IDENT);
    segments_ = open(txn, LISTSEG_DB_SEGMENTS);
    segnames_ = open(txn, LISTSEG_DB_SEGNAMES);
    heads_ = open(txn, LISTSEG_DB_HEADS);
    versions_ = open(txn, LISTSEG_DB_VERSIONS);
    check(mdb_txn_commit(txn), "mdb_txn_commit");
  }
  ~Store() {
    for (MDB_txn* txn : idle_) mdb_txn_abort(txn);
    mdb_env_close(env_);
  }

  // A read transaction for one call, from the store's pool of reset ones. Renewing a reset
  // transaction keeps its reader slot; taking a fresh slot per call locks LMDB's reader table, a
  // mutex shared with the server process. The pool belongs to the store, not to grpc's threads, so
  // every transaction ends before the environment closes (thread-local ones were aborted after
  // mdb_env_close at exit and crashed in liblmdb).
  class Txn {
   public:
    explicit Txn(Store& store) : store_(store), txn_(store.acquire()) {}
    ~Txn() { store_.release(txn_); }
    Txn(const Txn&) = delete;
    bool get(MDB_dbi dbi, const std::string& key, MDB_val* out) const {
      MDB_val k{key.size(), const_cast<char*>(key.data())};
      return mdb_get(txn_, dbi, &k, out) == 0;
    }

   private:
    Store& store_;
    MDB_txn* txn_;
  };

  Txn begin() { return Txn(*this); }
  bool credentials_required() noexcept {
    try {
      MDB_val raw;
      return begin().get(accounts_, make_key(LISTSEG_KEY_CREDENTIALS_FIXED, listseg_key_credentials), &raw);
    } catch (const std::exception&) {
      return false;
    }
  }

  MDB_dbi accounts_, guid_, ident_, segments_, segnames_, heads_, versions_;

 private:
  MDB_txn* acquire() {
    MDB_txn* txn = nullptr;
    {
      std::lock_guard<std::mutex> hold(idle_lock_);
      if (!idle_.empty()) {
        txn = idle_.back();
        idle_.pop_back();
      }
    }
    if (!txn) {
      check(mdb_txn_begin(env_, nullptr, MDB_RDONLY, &txn), "mdb_txn_begin");
    } else if (int rc = mdb_txn_renew(txn)) {
      mdb_txn_abort(txn);
      check(rc, "mdb_txn_renew");
    }
    return txn;
  }
  void release(MDB_txn* txn) {
    mdb_txn_reset(txn);
    std::lock_guard<std::mutex> hold(idle_lock_);
    idle_.push_back(txn);
  }
  static void check(int rc, const std::string& what) {
    if (rc) throw std::runtime_error(what + ": " + mdb_strerror(rc));
  }
  static MDB_dbi open(MDB_txn* txn, const char* name) {
    MDB_dbi dbi;
    check(mdb_dbi_open(txn, name, 0, &dbi), std::string("open database ") + name);
    return dbi;
  }
  MDB_env* env_ = nullptr;
  std::mutex idle_lock_;
  std::vector<MDB_txn*> idle_;   // reset read transactions, each holding its reader slot
};

using Bitmap = std::shared_ptr<roaring_bitmap_t>;

// The deserialized bitmap of each segment's latest version seen. A version's bitmap never changes,
// so an entry is right for as long as the head names its version.
class BitmapCache {
 public:
  Bitmap get(const Store::Txn& txn, const Store& store, const Segment& segment, uint64_t version) {
    {
      std::lock_guard<std::mutex> hold(lock_);
      auto it = entries_.find(segment.key);
      if (it != entries_.end() && it->second.first == version) return it->second.second;
    }
    MDB_val raw;
    std::string key = make_key(LISTSEG_KEY_VERSION_FIXED, listseg_key_version, bytes(segment.account), segment.id,
                               uint32_t(version));
    if (!txn.get(store.versions_, key, &raw)) return nullptr;
    roaring_bitmap_t* bm =
        roaring_bitmap_portable_deserialize_safe(static_cast<const char*>(raw.mv_data), raw.mv_size);
    if (!bm) return nullptr;
    Bitmap loaded(bm, roaring_bitmap_free);
    std::lock_guard<std::mutex> hold(lock_);
    if (entries_.size() >= kMaxEntries) entries_.clear();  // deleted segments must not pile up
    auto& slot = entries_[segment.key];
    if (!slot.second || slot.first < version) slot = {version, loaded};
    return loaded;
  }

 private:
  static constexpr size_t kMaxEntries = 4096;
  std::mutex lock_;
  std::map<std::string, std::pair<uint64_t, Bitmap>> entries_;  // account + segment id -> (version, bitmap)
};

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
    v1::Membership::WithRawCallbackMethod_ListMembers<v1::Membership::CallbackService>>>;

class Membership final : public RawMembership {
 public:
  Membership(Store& store, std::shared_ptr<grpc::Channel> backend) : store_(store), backend_(backend) {}

  grpc::ServerUnaryReactor* IsMember(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req,
                                     grpc::ByteBuffer* resp) override {
    if (!req->Valid()) return without_request(ctx);
    bool answered = false;
    try {
      answered = answer(ctx, *req, resp);
    } catch (const std::exception& e) {  // an LMDB error (reader table full, map resized): the server answers
      std::fprintf(stderr, "listseg-front: %s; relaying\n", e.what());
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

 private:
  // IsMember as core/segments.py check_members answers it, or false when only the server can answer.
  bool answer(const grpc::CallbackServerContext* ctx, const grpc::ByteBuffer& raw_request, grpc::ByteBuffer* out) {
    v1::IsMemberRequest req;
    grpc::Slice whole;
    if (!raw_request.TrySingleSlice(&whole).ok() && !raw_request.DumpToSingleSlice(&whole).ok()) return false;
    if (!req.ParseFromArray(whole.begin(), int(whole.size()))) return false;
    const char* table;
    if (req.type() == v1::IDENTITY_TYPE_GUID) table = "g";
    else if (req.type() == v1::IDENTITY_TYPE_IDENTITY) table = "i";
    else return false;
    std::string key = strip(req.identity());
    if (key.empty() || key.size() + LISTSEG_KEY_GUID_FIXED > kMaxKey) return false;

    auto txn = store_.begin();
    std::string prefix;
    if (!account(ctx, txn, &prefix)) return false;
    Segment seg;
    if (!segment(txn, prefix, req.segment(), &seg)) return false;
    MDB_val raw;
    uint64_t version = 0;
    if (txn.get(store_.heads_, make_key(LISTSEG_KEY_HEAD_FIXED, listseg_key_head, bytes(prefix), seg.id), &raw) &&
        !read_int(raw, LISTSEG_VERSION_WIDTH, listseg_get_version, &version))
      return false;
    bool member = false;
    if (version != 0) {
      Bitmap bm = cache_.get(txn, store_, seg, version);
      if (!bm) return false;
      bool guid = table[0] == 'g';
      std::string k = guid ? make_key(LISTSEG_KEY_GUID_FIXED + key.size(), listseg_key_guid, bytes(prefix), key.data(), key.size())
                           : make_key(LISTSEG_KEY_IDENT_FIXED + key.size(), listseg_key_ident, bytes(prefix), key.data(), key.size());
      uint64_t uid;
      if (txn.get(guid ? store_.guid_ : store_.ident_, k, &raw) && read_int(raw, LISTSEG_UID_WIDTH, listseg_get_uid, &uid))
        member = roaring_bitmap_contains(bm.get(), uint32_t(uid));
    }
    v1::IsMemberResponse resp;
    resp.set_member(member);
    resp.set_version(version);
    std::string bytes = resp.SerializeAsString();
    grpc::Slice slice(bytes);
    *out = grpc::ByteBuffer(&slice, 1);
    return true;
  }

  // The caller's account prefix: the default account while no passcode exists, else the named
  // account if the server has accepted this passcode for it before.
  bool account(const grpc::CallbackServerContext* ctx, const Store::Txn& txn, std::string* prefix) {
    MDB_val raw;
    std::string name = LISTSEG_DEFAULT_ACCOUNT;
    if (txn.get(store_.accounts_, make_key(LISTSEG_KEY_CREDENTIALS_FIXED, listseg_key_credentials), &raw)) {
      name = metadata(ctx, "x-account-id");
      if (name.empty() || !verified_.known(name, metadata(ctx, "x-passcode"))) return false;
    }
    uint64_t number;
    std::string key = make_key(LISTSEG_KEY_ACCOUNT_NAME_FIXED + name.size(), listseg_key_account_name, name.data(), name.size());
    if (!txn.get(store_.accounts_, key, &raw) || !read_int(raw, LISTSEG_ACCOUNT_WIDTH, listseg_get_account, &number))
      return false;
    prefix->assign(LISTSEG_ACCOUNT_WIDTH, '\0');
    listseg_put_account(reinterpret_cast<uint8_t*>(&(*prefix)[0]), uint32_t(number));
    return true;
  }

  // account + segment id for "42", "segments/42" or a name (server/convert.py segment_ref).
  bool segment(const Store::Txn& txn, const std::string& prefix, std::string ref, Segment* seg) {
    if (ref.rfind("segments/", 0) == 0) ref.erase(0, 9);
    if (ref.empty()) return false;
    MDB_val raw;
    seg->account = prefix;
    if (ref.find_first_not_of("0123456789") == std::string::npos) {
      if (ref.size() > 9) return false;
      seg->id = uint32_t(std::stoul(ref));
      seg->key = make_key(LISTSEG_KEY_SEGMENT_FIXED, listseg_key_segment, bytes(prefix), seg->id);
      return txn.get(store_.segments_, seg->key, &raw);
    }
    uint64_t id;
    if (LISTSEG_KEY_SEGMENT_NAME_FIXED + ref.size() > kMaxKey) return false;
    std::string key = make_key(LISTSEG_KEY_SEGMENT_NAME_FIXED + ref.size(), listseg_key_segment_name, bytes(prefix),
                               ref.data(), ref.size());
    if (!txn.get(store_.segnames_, key, &raw) || !read_int(raw, LISTSEG_SEGMENT_ID_WIDTH, listseg_get_segment_id, &id))
      return false;
    seg->id = uint32_t(id);
    seg->key = make_key(LISTSEG_KEY_SEGMENT_FIXED, listseg_key_segment, bytes(prefix), seg->id);
    return true;
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
      if (s.ok() && !account.empty() && store_.credentials_required()) verified_.remember(account, passcode);
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

  Store& store_;
  grpc::GenericStub backend_;
  BitmapCache cache_;
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
  std::string listen, backend, data, tls_cert, tls_key, backend_ca;
  bool loopback = false;  // --listen-is-loopback: listseg serve says the listen address is loopback
};

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, std::string*> flags = {{"--listen", &a.listen},     {"--backend", &a.backend},
                                               {"--data", &a.data},         {"--tls-cert", &a.tls_cert},
                                               {"--tls-key", &a.tls_key},   {"--backend-ca", &a.backend_ca}};
  for (int i = 1; i < argc; i++) {
    if (std::strcmp(argv[i], "--listen-is-loopback") == 0) {
      a.loopback = true;
      continue;
    }
    auto it = flags.find(argv[i]);
    if (it == flags.end() || i + 1 >= argc) throw std::runtime_error(std::string("unknown or empty flag ") + argv[i]);
    *it->second = argv[++i];
  }
  if (a.listen.empty() || a.backend.empty() || a.data.empty())
    throw std::runtime_error("--listen, --backend and --data are required");
  if (a.tls_cert.empty() != a.tls_key.empty()) throw std::runtime_error("--tls-cert and --tls-key go together");
  return a;
}

int run(const Args& args) {
  Store store(args.data);
  // As the server: with no passcode anywhere, every caller is the default account, so only this
  // machine may call. Which hosts are loopback is server/addresses.py's rule, told by a flag.
  if (!store.credentials_required() && !args.loopback)
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
  Membership service(store, grpc::CreateCustomChannel(args.backend, backend_creds, channel_args));

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
