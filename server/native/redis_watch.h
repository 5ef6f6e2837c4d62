// Whether what REDIS_LOCATE read of an account may have changed since, told by Redis itself.
//
// Per account, one connection of its own to the node serving the account's metadata slot turns on
// CLIENT TRACKING in broadcast mode for the keys REDIS_LOCATE reads (core/layout.py
// REDIS_LOCATE_KEYS), redirected to itself, and subscribes to __redis__:invalidate. The node sends
// a message as it applies any write to those keys, in the same turn of its event loop as its reply
// to the writer; so by the time a writer's caller can ask a front, the message is in the front's
// socket. A message waiting unread counts as a change, so it need not have been read yet.
// Commands in Valkey 8 too; RESP2, as hiredis 0.14 speaks nothing newer.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "redis_cluster.h"

namespace listseg::front {

// An account's metadata key (core/layout.py redis_account_key): "names", "seg", "heads", "acct", ...
std::string account_key(uint32_t acct, const char* what);

class HeadWatch {
 public:
  explicit HeadWatch(RedisCluster& redis);
  ~HeadWatch();
  HeadWatch(const HeadWatch&) = delete;

  // A stamp to keep with what is read next of account acct's metadata, or 0 when no watch of it is
  // live, or it is reading a message (then keep nothing). Makes the watch when there is none on the node serving its slot now.
  uint64_t stamp(uint32_t acct);
  // True while nothing may have changed since `stamp` was taken: the watch is live, and has had
  // no message since, read or waiting.
  bool unchanged(uint32_t acct, uint64_t stamp);

 private:
  struct Watch;
  std::shared_ptr<Watch> open(uint32_t acct, const std::string& node);
  void listen();  // the thread that reads every watch's messages

  RedisCluster& redis_;
  std::atomic<uint64_t> changes_{0};  // stamps are taken from here, so no two are alike
  int wake_[2] = {-1, -1};            // a pipe: a new watch to poll, or stop
  std::atomic<bool> stopping_{false};
  std::mutex lock_;  // guards all below
  std::map<uint32_t, std::shared_ptr<Watch>> watches_;
  std::map<uint32_t, std::chrono::steady_clock::time_point> failed_at_;  // accounts whose watch failed to open
  std::vector<std::shared_ptr<Watch>> added_;                            // for listen() to take
  std::thread listener_;
};

}  // namespace listseg::front
