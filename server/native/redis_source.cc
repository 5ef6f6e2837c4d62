// The Redis source. Per call, REDIS_LOCATE on the account's slot (the segment's id, record and head,
// and the profiles generation) unless its last reply is still good: HeadWatch has had no message of
// a write to what it read, and it is under kHeadTrust old. Then the key's bucket: from BucketCache
// when it holds it at that generation, else HGET (or, to keep it, REDIS_BUCKET_READ when the bucket
// is asked often). When LOCATE and the bucket's read both go, they overlap (RedisCluster::run sends both
// before reading either). So a call on a kept head and a cached bucket makes no Redis call. A version's
// bitmap is read once (its manifest, then its containers) and kept: versions never change, and the
// head names its version and token ("version:token"), so an entry is right while the head names it.
#include "redis_source.h"

#include <openssl/sha.h>
#include <roaring/roaring.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "bucket_cache.h"
#include "layout.h"
#include "redis_cluster.h"
#include "redis_watch.h"

namespace listseg::front {
namespace {

using Bitmap = std::shared_ptr<roaring_bitmap_t>;
// How long "no account has a passcode" is believed before it is read again: core/accounts.py RECHECK_S.
constexpr auto kRecheckCredentials = std::chrono::seconds(1);
constexpr size_t kMaxEntries = 4096;  // cached versions, heads and accounts, cleared past this
// How long a head read is used while its watch says nothing changed, at most: the bound for what no
// message tells (its slot moved to another node, a node cut off from the cluster but not from us).
constexpr auto kHeadTrust = std::chrono::seconds(1);

std::string text(const redisReply* r) { return std::string(r->str, r->len); }
bool is_text(const redisReply* r) { return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS); }

std::string sha1_hex(const char* s) {
  unsigned char d[SHA_DIGEST_LENGTH];
  SHA1(reinterpret_cast<const unsigned char*>(s), std::strlen(s), d);
  std::string hex;
  char two[3];
  for (unsigned char b : d) {
    std::snprintf(two, sizeof two, "%02x", b);
    hex += two;
  }
  return hex;
}

// A manifest as core/redis_backend.py stage() writes it, compact JSON (core/layout.py dumps):
// {"token":"<hex>","blocks":[...],"size":N}. Only token and blocks are read.
bool parse_manifest(const std::string& raw, std::string* token, std::vector<long>* blocks) {
  size_t t = raw.find("\"token\":\"");
  size_t b = raw.find("\"blocks\":[");
  if (t == std::string::npos || b == std::string::npos) return false;
  t += 9;
  size_t t_end = raw.find('"', t);
  if (t_end == std::string::npos) return false;
  *token = raw.substr(t, t_end - t);
  const char* p = raw.c_str() + b + 10;
  while (*p && *p != ']') {
    char* end;
    long v = std::strtol(p, &end, 10);
    if (end == p) return false;
    blocks->push_back(v);
    p = end;
    if (*p == ',') p++;
  }
  return *p == ']';
}

class RedisSource final : public Source {
 public:
  RedisSource(std::vector<std::string> seeds, bool cluster, std::string user, std::string password)
      : redis_(std::move(seeds), cluster, std::move(user), std::move(password)),
        locate_sha_(sha1_hex(LISTSEG_REDIS_LOCATE)),
        bucket_read_sha_(sha1_hex(LISTSEG_REDIS_BUCKET_READ)) {}

  bool credentials_required() override {
    if (required_) return true;  // passcodes, once there, stay required
    auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> hold(lock_);
      if (now - credentials_read_at_ < kRecheckCredentials) return false;
    }
    const std::string key = LISTSEG_REDIS_DIRECTORY_CREDENTIALS;
    auto replies = redis_.run({{key, {"GET", key}}});
    bool required = replies[0]->type != REDIS_REPLY_NIL;
    if (replies[0]->type == REDIS_REPLY_ERROR) throw RedisError(text(replies[0].get()));
    std::lock_guard<std::mutex> hold(lock_);
    credentials_read_at_ = now;
    if (required) required_ = true;
    return required;
  }

  bool is_member(const std::string& account, const SegmentRef& ref, bool guid, const std::string& key,
                 Answer* out) override {
    uint32_t acct, buckets;
    if (!account_of(account, &acct, &buckets)) return false;
    uLong crc = crc32(0, reinterpret_cast<const Bytef*>(key.data()), uInt(key.size()));
    std::string bucket = format(LISTSEG_REDIS_BUCKET_KEY, int(acct), guid ? "g" : "i", int(crc % buckets));
    std::string asked = std::to_string(acct) + (ref.by_id ? "#" + std::to_string(ref.id) : ":" + ref.name);
    Located where;
    if (!known(acct, asked, &where)) {
      // The bucket's read goes with LOCATE, unless a kept copy may serve once the generation is known.
      if (buckets_.holds(bucket)) {
        if (!locate(acct, ref, asked, nullptr, &where)) return false;
      } else {
        // HGET only: a bucket read beside LOCATE may be older than the generation LOCATE reads on
        // another node, so it is not one to keep.
        Reply found;
        Command get = {bucket, {"HGET", bucket, key}};
        if (!locate(acct, ref, asked, &get, &where, &found)) return false;
        return answer(acct, where, bucket, key, found.get(), out);
      }
    }
    std::shared_ptr<const Bucket> kept = where.cacheable ? buckets_.get(bucket, where.generation) : nullptr;
    if (kept) return answer(acct, where, *kept, key, out);
    return answer(acct, where, bucket, key, run({lookup(bucket, key)})[0].get(), out);
  }

 private:
  // What REDIS_LOCATE found of a segment: its id, and its head ("version:token"), if it has one; and
  // the account's profiles generation, when it says the identity buckets may be kept (even).
  struct Located {
    std::string seg;
    bool has_head = false;
    std::string head;
    bool cacheable = false;
    uint64_t generation = 0;
  };

  // HGET of key in its bucket; when the bucket is asked often enough to keep, REDIS_BUCKET_READ,
  // which reads it whole unless it is too big to keep.
  Command lookup(const std::string& bucket, const std::string& key) {
    if (!buckets_.hot(bucket)) return {bucket, {"HGET", bucket, key}};
    return {bucket, {"EVALSHA", bucket_read_sha_, "1", bucket, key, std::to_string(BucketCache::kMaxFields)}};
  }

  // RedisCluster::run, with the scripts sent whole (EVAL) when a node has not seen them yet (or
  // restarted).
  std::vector<Reply> run(std::vector<Command> commands) {
    auto replies = redis_.run(commands);
    bool unseen = false;
    for (size_t i = 0; i < replies.size(); i++) {
      if (replies[i]->type != REDIS_REPLY_ERROR || text(replies[i].get()).rfind("NOSCRIPT", 0) != 0) continue;
      commands[i].args[0] = "EVAL";
      commands[i].args[1] = commands[i].args[1] == locate_sha_ ? LISTSEG_REDIS_LOCATE : LISTSEG_REDIS_BUCKET_READ;
      unseen = true;
    }
    return unseen ? redis_.run(commands) : std::move(replies);
  }

  // REDIS_LOCATE of segment `ref`, remembered under `asked` while the watch allows; `with` (and its
  // reply, in *reply) goes in the same round trip. False for no such segment, or no answer.
  bool locate(uint32_t acct, const SegmentRef& ref, const std::string& asked, const Command* with, Located* where,
              Reply* reply = nullptr) {
    uint64_t stamp = watch_.stamp(acct);  // before the read: a write after it is told
    std::vector<std::string> args = {"EVALSHA", locate_sha_, "4"};
    for (const char* what : LISTSEG_REDIS_LOCATE_KEYS) args.push_back(account_key(acct, what));
    args.push_back(ref.by_id ? "" : ref.name);
    args.push_back(std::to_string(ref.by_id ? ref.id : 0));
    std::vector<Command> commands = {{args[3], args}};
    if (with) commands.push_back(*with);
    auto replies = run(std::move(commands));
    if (!located(replies[0].get(), where)) return false;
    if (stamp) remember(asked, stamp, *where);
    if (reply) *reply = std::move(replies[1]);
    return true;
  }

  // False for no such segment (or a reply that is not REDIS_LOCATE's): the server answers.
  static bool located(const redisReply* found, Located* out) {
    if (found->type != REDIS_REPLY_ARRAY || found->elements != 4) return false;
    if (!is_text(found->element[0]) || !is_text(found->element[1])) return false;
    out->seg = text(found->element[0]);
    out->has_head = is_text(found->element[2]);
    out->head = out->has_head ? text(found->element[2]) : std::string();
    if (is_text(found->element[3])) {
      char* end;
      out->generation = std::strtoull(found->element[3]->str, &end, 10);
      out->cacheable = end == found->element[3]->str + found->element[3]->len && out->generation % 2 == 0;
    }
    return true;
  }

  // The answer for segment `where` from the bucket's reply: HGET's of the key, or HGETALL's (then
  // kept, when the generation allows); false to relay.
  bool answer(uint32_t acct, const Located& where, const std::string& bucket, const std::string& key,
              const redisReply* reply, Answer* out) {
    if (reply->type == REDIS_REPLY_ARRAY) {
      std::shared_ptr<const Bucket> all = Bucket::parse(reply);
      if (!all) return false;
      if (where.cacheable) buckets_.keep(bucket, where.generation, all);
      return answer(acct, where, *all, key, out);
    }
    if (reply->type == REDIS_REPLY_NIL) return answer(acct, where, nullptr, out);
    if (reply->type != REDIS_REPLY_STRING || reply->len != LISTSEG_UID_WIDTH) return false;
    uint32_t uid = listseg_get_uid(reinterpret_cast<const uint8_t*>(reply->str));
    return answer(acct, where, &uid, out);
  }

  bool answer(uint32_t acct, const Located& where, const Bucket& bucket, const std::string& key, Answer* out) {
    uint32_t uid;
    return answer(acct, where, bucket.find(key, &uid) ? &uid : nullptr, out);
  }

  // The answer for segment `where` for the profile `uid` (null: no such profile); false to relay.
  bool answer(uint32_t acct, const Located& where, const uint32_t* uid, Answer* out) {
    out->version = 0;
    out->member = false;
    if (!where.has_head) return true;  // no version yet
    size_t colon = where.head.find(':');
    if (colon == std::string::npos) return false;
    out->version = std::strtoull(where.head.c_str(), nullptr, 10);
    Bitmap bm = version(acct, where.seg, out->version, where.head.substr(colon + 1));
    if (!bm) return false;
    out->member = uid && roaring_bitmap_contains(bm.get(), *uid);
    return true;
  }

  // What REDIS_LOCATE last read for `asked` (account and segment reference), if nothing may have
  // changed since (HeadWatch) and it is under kHeadTrust old.
  bool known(uint32_t acct, const std::string& asked, Located* out) {
    uint64_t stamp;
    {
      std::lock_guard<std::mutex> hold(lock_);
      auto it = heads_.find(asked);
      if (it == heads_.end() || std::chrono::steady_clock::now() - it->second.read_at > kHeadTrust) return false;
      stamp = it->second.stamp;
      *out = it->second.where;
    }
    return watch_.unchanged(acct, stamp);
  }

  void remember(const std::string& asked, uint64_t stamp, const Located& where) {
    std::lock_guard<std::mutex> hold(lock_);
    if (heads_.size() >= kMaxEntries) heads_.clear();
    heads_[asked] = {stamp, std::chrono::steady_clock::now(), where};
  }

  // The account's number and bucket count (both fixed once the account exists).
  bool account_of(const std::string& name, uint32_t* acct, uint32_t* buckets) {
    {
      std::lock_guard<std::mutex> hold(lock_);
      auto it = accounts_.find(name);
      if (it != accounts_.end()) {
        *acct = it->second.first;
        *buckets = it->second.second;
        return true;
      }
    }
    const std::string names = LISTSEG_REDIS_DIRECTORY_NAMES;
    auto number = redis_.run({{names, {"HGET", names, name}}});
    if (!is_text(number[0].get())) return false;
    *acct = uint32_t(std::strtoul(number[0]->str, nullptr, 10));
    std::string meta = account_key(*acct, "acct");
    auto count = redis_.run({{meta, {"HGET", meta, LISTSEG_REDIS_BUCKETS_FIELD}}});
    *buckets = is_text(count[0].get()) ? uint32_t(std::strtoul(count[0]->str, nullptr, 10)) : LISTSEG_REDIS_BUCKETS;
    if (*buckets == 0) return false;
    std::lock_guard<std::mutex> hold(lock_);
    if (accounts_.size() >= kMaxEntries) accounts_.clear();
    accounts_[name] = {*acct, *buckets};
    return true;
  }

  // The members of version `version` (head token `token`) of segment `seg`, or null when a part of
  // it is missing (a container lost in a failover, or expired): then the server decides.
  Bitmap version(uint32_t acct, const std::string& seg, uint64_t version, const std::string& token) {
    std::string cache_key = std::to_string(acct) + ":" + seg;
    {
      std::lock_guard<std::mutex> hold(lock_);
      auto it = versions_.find(cache_key);
      if (it != versions_.end() && it->second.version == version && it->second.token == token) return it->second.bm;
    }
    std::string manifests = account_key(acct, ("m:" + seg).c_str());
    auto manifest = redis_.run({{manifests, {"HGET", manifests, std::to_string(version)}}});
    std::string stored_token;
    std::vector<long> blocks;
    if (!is_text(manifest[0].get()) || !parse_manifest(text(manifest[0].get()), &stored_token, &blocks) ||
        stored_token != token)
      return nullptr;
    std::vector<Command> gets;
    std::string container = format(LISTSEG_REDIS_VERSION_CONTAINER, token.c_str());
    for (long block : blocks) {
      std::string k = format(LISTSEG_REDIS_BLOCK_KEY, int(acct), int(block), container.c_str());
      gets.push_back({k, {"GET", k}});
    }
    auto parts = redis_.run(gets);
    Bitmap bm(roaring_bitmap_create(), roaring_bitmap_free);
    for (const Reply& part : parts) {
      if (part->type != REDIS_REPLY_STRING) return nullptr;
      roaring_bitmap_t* one = roaring_bitmap_portable_deserialize_safe(part->str, part->len);
      if (!one) return nullptr;
      roaring_bitmap_or_inplace(bm.get(), one);
      roaring_bitmap_free(one);
    }
    std::lock_guard<std::mutex> hold(lock_);
    if (versions_.size() >= kMaxEntries) versions_.clear();  // deleted segments must not pile up
    auto& slot = versions_[cache_key];
    if (!slot.bm || slot.version <= version) slot = {version, token, bm};
    return bm;
  }

  struct Head {
    uint64_t stamp;  // HeadWatch's, taken before the read
    std::chrono::steady_clock::time_point read_at;
    Located where;
  };
  struct Version {
    uint64_t version;
    std::string token;
    Bitmap bm;
  };

  RedisCluster redis_;
  HeadWatch watch_{redis_};
  BucketCache buckets_;
  const std::string locate_sha_, bucket_read_sha_;
  std::atomic<bool> required_{false};
  std::mutex lock_;  // guards all below
  std::chrono::steady_clock::time_point credentials_read_at_;
  std::map<std::string, std::pair<uint32_t, uint32_t>> accounts_;  // name -> (number, buckets)
  std::map<std::string, Version> versions_;                      // "account:segment id" -> its head's version
  std::map<std::string, Head> heads_;                            // "account:name" or "account#id" -> its head
};

}  // namespace

std::unique_ptr<Source> open_redis(std::vector<std::string> seeds, bool cluster, std::string user,
                                   std::string password) {
  return std::make_unique<RedisSource>(std::move(seeds), cluster, std::move(user), std::move(password));
}

}  // namespace listseg::front
