#include "bucket_cache.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <numeric>

#include "layout.h"

namespace listseg::front {
namespace {

constexpr auto kHot = std::chrono::seconds(1);
// The buckets' bytes kept at most (fields, plus 8 bytes an entry): about 5M 40-byte guids.
constexpr size_t kMaxBytes = size_t(256) << 20;

int64_t now_ticks() { return std::chrono::steady_clock::now().time_since_epoch().count(); }

}  // namespace

std::shared_ptr<const Bucket> Bucket::parse(const redisReply* all) {
  if (!all || all->type != REDIS_REPLY_ARRAY || all->elements % 2) return nullptr;
  size_t n = all->elements / 2;
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  for (size_t i = 0; i < all->elements; i++)
    if (all->element[i]->type != REDIS_REPLY_STRING || (i % 2 && all->element[i]->len != LISTSEG_UID_WIDTH))
      return nullptr;
  auto field = [all](uint32_t i) { return std::string_view(all->element[2 * i]->str, all->element[2 * i]->len); };
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return field(a) < field(b); });
  auto out = std::make_shared<Bucket>();
  out->ends_.reserve(n);
  out->uids_.reserve(n);
  for (uint32_t i : order) {
    out->keys_.append(field(i));
    out->ends_.push_back(uint32_t(out->keys_.size()));
    out->uids_.push_back(listseg_get_uid(reinterpret_cast<const uint8_t*>(all->element[2 * i + 1]->str)));
  }
  return out;
}

bool Bucket::find(const std::string& key, uint32_t* uid) const {
  auto field = [this](size_t i) {
    uint32_t start = i ? ends_[i - 1] : 0;
    return std::string_view(keys_.data() + start, ends_[i] - start);
  };
  size_t lo = 0, hi = uids_.size();  // the first field not below key is in [lo, hi]
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (field(mid) < key) lo = mid + 1;
    else hi = mid;
  }
  if (lo == uids_.size() || field(lo) != key) return false;
  *uid = uids_[lo];
  return true;
}

std::shared_ptr<const Bucket> BucketCache::get(const std::string& key, uint64_t generation) {
  std::lock_guard<std::mutex> hold(lock_);
  auto it = kept_.find(key);
  if (it == kept_.end() || it->second.generation != generation) return nullptr;
  return it->second.bucket;
}

bool BucketCache::holds(const std::string& key) {
  std::lock_guard<std::mutex> hold(lock_);
  return kept_.count(key) != 0;
}

bool BucketCache::hot(const std::string& key) {
  auto& asked = asked_at_[std::hash<std::string>{}(key) % asked_at_.size()];
  int64_t now = now_ticks();
  int64_t last = asked.exchange(now);
  return now - last < std::chrono::duration_cast<std::chrono::steady_clock::duration>(kHot).count();
}

void BucketCache::keep(const std::string& key, uint64_t generation, std::shared_ptr<const Bucket> bucket) {
  std::lock_guard<std::mutex> hold(lock_);
  auto it = kept_.find(key);
  if (it != kept_.end()) {
    bytes_ -= it->second.bucket->bytes();
    kept_.erase(it);
  }
  if (bytes_ + bucket->bytes() > kMaxBytes) {  // a simple bound: the buckets asked since come back first
    kept_.clear();
    bytes_ = 0;
  }
  bytes_ += bucket->bytes();
  kept_[key] = {generation, std::move(bucket)};
}

}  // namespace listseg::front
