// The identity buckets (core/layout.py redis_bucket_key) the front asks most, read whole
// (REDIS_BUCKET_READ), so that a check of a cached bucket makes no Redis call at all.
//
// A bucket is kept under the account's profiles generation known before it was read (redis_source.cc
// reads one whole only on a call whose head it already knows), and only an even one (no profile write
// under way: core/redis_profiles.py moves it to odd before it writes a bucket and to even after). It answers only while the generation the caller has just read or confirmed (REDIS_LOCATE,
// kept while the head watch says nothing changed) is that one: any profile write or delete makes it
// stale. A bucket is read whole only once it is asked again within kHot, so an account too big for
// the cache, or asked too thinly, keeps to one HGET a call.
#pragma once

#include <hiredis/hiredis.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace listseg::front {

// One bucket read whole (HGETALL): its fields sorted, end to end, with their uids.
class Bucket {
 public:
  // Null when `all` is not a bucket's reply (a field/value array, every value LISTSEG_UID_WIDTH bytes).
  static std::shared_ptr<const Bucket> parse(const redisReply* all);
  // False when key is not in the bucket.
  bool find(const std::string& key, uint32_t* uid) const;
  size_t bytes() const { return keys_.size() + 8 * uids_.size(); }

 private:
  std::string keys_;
  std::vector<uint32_t> ends_;  // where each field ends in keys_
  std::vector<uint32_t> uids_;
};

class BucketCache {
 public:
  // A bucket of more fields is not kept: reading it whole would hold its node too long.
  static constexpr size_t kMaxFields = 2048;

  // The bucket as kept at profiles generation `generation`, or null.
  std::shared_ptr<const Bucket> get(const std::string& key, uint64_t generation);
  // True when a copy of the bucket is kept, at any generation.
  bool holds(const std::string& key);
  // True when the bucket named `key` was asked within kHot before: worth reading whole.
  bool hot(const std::string& key);
  // Keeps `bucket`, read at `generation`. Past kMaxBytes the cache starts again empty.
  void keep(const std::string& key, uint64_t generation, std::shared_ptr<const Bucket> bucket);

 private:
  struct Kept {
    uint64_t generation;
    std::shared_ptr<const Bucket> bucket;
  };
  std::array<std::atomic<int64_t>, 4096> asked_at_{};  // steady_clock ticks, by a hash of the key
  std::mutex lock_;                                    // guards all below
  std::map<std::string, Kept> kept_;
  size_t bytes_ = 0;
};

}  // namespace listseg::front
