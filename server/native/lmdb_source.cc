// The LMDB source: one read transaction per call, exactly as core/segments.py reads: segment ->
// head version -> bitmap (cached per version; versions never change), guid or identity -> uid.
#include "lmdb_source.h"

#include <lmdb.h>
#include <roaring/roaring.h>

#include <map>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "layout.h"

namespace listseg::front {
namespace {

constexpr size_t kMaxKey = 511;  // LMDB's default maximum key size

// Keys and values exactly as the server stores them: layout.h, generated from core/layout.py.
// A key from one of its listseg_key_* builders, into a string of room `size`, cut to the key's length.
template <typename Build, typename... Args>
std::string make_key(size_t size, Build build, Args... args) {
  std::string key(size, '\0');
  key.resize(build(reinterpret_cast<uint8_t*>(&key[0]), args...));
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

// A read-only view of the server's LMDB environment.
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
    // Keys of another layout would answer "not a member" for every stored guid: refuse them. The
    // server brings the directory up to its layout when it opens it, before it starts this front.
    std::string key = make_key(LISTSEG_KEY_LAYOUT_FIXED, listseg_key_layout);
    MDB_val k{key.size(), &key[0]}, v;
    uint64_t layout = 1;
    if (mdb_get(txn, accounts_, &k, &v) == 0 && !read_int(v, LISTSEG_LAYOUT_VERSION_WIDTH, listseg_get_layout_version, &layout))
      layout = 0;
    check(mdb_txn_commit(txn), "mdb_txn_commit");
    if (layout != LISTSEG_LAYOUT)
      throw std::runtime_error(path + " holds data of layout " + std::to_string(layout) + "; this front reads layout " +
                               std::to_string(LISTSEG_LAYOUT) + ": open it with listseg serve first, which upgrades it");
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

class LmdbSource final : public Source {
 public:
  explicit LmdbSource(const std::string& path) : store_(path) {}

  bool credentials_required() override {
    MDB_val raw;
    return store_.begin().get(store_.accounts_, make_key(LISTSEG_KEY_CREDENTIALS_FIXED, listseg_key_credentials),
                              &raw);
  }

  bool is_member(const std::string& account, const SegmentRef& ref, bool guid, const std::string& key,
                 Answer* out) override {
    if (key.size() + LISTSEG_KEY_GUID_FIXED > kMaxKey) return false;
    auto txn = store_.begin();
    Segment seg;
    if (!prefix(txn, account, &seg.account) || !segment(txn, ref, &seg)) return false;
    MDB_val raw;
    uint64_t version = 0;
    if (txn.get(store_.heads_, make_key(LISTSEG_KEY_HEAD_FIXED, listseg_key_head, bytes(seg.account), seg.id), &raw) &&
        !read_int(raw, LISTSEG_VERSION_WIDTH, listseg_get_version, &version))
      return false;
    out->version = version;
    out->member = false;
    if (version == 0) return true;
    Bitmap bm = cache_.get(txn, store_, seg, version);
    if (!bm) return false;
    const uint8_t* account_prefix = bytes(seg.account);
    std::string k = guid ? make_key(LISTSEG_KEY_GUID_FIXED + key.size(), listseg_key_guid, account_prefix, key.data(), key.size())
                         : make_key(LISTSEG_KEY_IDENT_FIXED + key.size(), listseg_key_ident, account_prefix, key.data(), key.size());
    uint64_t uid;
    if (txn.get(guid ? store_.guid_ : store_.ident_, k, &raw) && read_int(raw, LISTSEG_UID_WIDTH, listseg_get_uid, &uid))
      out->member = roaring_bitmap_contains(bm.get(), uint32_t(uid));
    return true;
  }

 private:
  // The account prefix of the account named `name`.
  bool prefix(const Store::Txn& txn, const std::string& name, std::string* out) {
    MDB_val raw;
    uint64_t number;
    std::string key = make_key(LISTSEG_KEY_ACCOUNT_NAME_FIXED + name.size(), listseg_key_account_name, name.data(), name.size());
    if (!txn.get(store_.accounts_, key, &raw) || !read_int(raw, LISTSEG_ACCOUNT_WIDTH, listseg_get_account, &number))
      return false;
    out->assign(LISTSEG_ACCOUNT_WIDTH, '\0');
    listseg_put_account(reinterpret_cast<uint8_t*>(&(*out)[0]), uint32_t(number));
    return true;
  }

  // seg's id and key (seg->account set), if the segment exists.
  bool segment(const Store::Txn& txn, const SegmentRef& ref, Segment* seg) {
    MDB_val raw;
    if (ref.by_id) {
      seg->id = ref.id;
    } else {
      uint64_t id;
      if (LISTSEG_KEY_SEGMENT_NAME_FIXED + ref.name.size() > kMaxKey) return false;
      std::string key = make_key(LISTSEG_KEY_SEGMENT_NAME_FIXED + ref.name.size(), listseg_key_segment_name,
                                 bytes(seg->account), ref.name.data(), ref.name.size());
      if (!txn.get(store_.segnames_, key, &raw) || !read_int(raw, LISTSEG_SEGMENT_ID_WIDTH, listseg_get_segment_id, &id))
        return false;
      seg->id = uint32_t(id);
    }
    seg->key = make_key(LISTSEG_KEY_SEGMENT_FIXED, listseg_key_segment, bytes(seg->account), seg->id);
    return ref.by_id ? txn.get(store_.segments_, seg->key, &raw) : true;
  }

  Store store_;
  BitmapCache cache_;
};

}  // namespace

std::unique_ptr<Source> open_lmdb(const std::string& path) { return std::make_unique<LmdbSource>(path); }

}  // namespace listseg::front
