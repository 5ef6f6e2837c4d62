#include "redis_watch.h"

#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "layout.h"
#include "source.h"

namespace listseg::front {
namespace {

// How long a watch that would not open is not tried again (an ACL that refuses CLIENT TRACKING or
// SUBSCRIBE, a node down): meanwhile every call reads the head, as with no watch at all.
constexpr auto kRetryOpen = std::chrono::seconds(1);

bool waiting(int fd) {  // bytes (or the end of the stream) not yet read
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) != 0;
}

}  // namespace

std::string account_key(uint32_t acct, const char* what) { return format(LISTSEG_REDIS_ACCOUNT_KEY, int(acct), what); }

struct HeadWatch::Watch {
  std::string node;
  redisContext* c = nullptr;
  std::atomic<uint64_t> stamp{0};  // moved before each read of its socket
  std::atomic<uint64_t> done{0};   // set to stamp once that read is over
  std::atomic<bool> live{true};
  ~Watch() {
    if (c) redisFree(c);
  }
};

HeadWatch::HeadWatch(RedisCluster& redis) : redis_(redis) {
  if (pipe(wake_) != 0) throw std::runtime_error("pipe failed");
  listener_ = std::thread([this] { listen(); });
}

HeadWatch::~HeadWatch() {
  stopping_ = true;
  (void)!write(wake_[1], "x", 1);
  listener_.join();
  close(wake_[0]);
  close(wake_[1]);
}

uint64_t HeadWatch::stamp(uint32_t acct) {
  std::string node;
  try {
    node = redis_.node_of(account_key(acct, "heads"));
  } catch (const RedisError&) {  // the slot map is being read again: read the head, keep nothing
    return 0;
  }
  {
    std::lock_guard<std::mutex> hold(lock_);
    auto it = watches_.find(acct);
    if (it != watches_.end() && it->second->live && it->second->node == node) {
      // Not during a read: a message that reaches the socket after the stamp and before the read
      // would go under it unseen.
      uint64_t now = it->second->stamp;
      return it->second->done == now ? now : 0;
    }
    auto failed = failed_at_.find(acct);
    if (failed != failed_at_.end() && std::chrono::steady_clock::now() - failed->second < kRetryOpen) return 0;
  }
  std::shared_ptr<Watch> w;
  try {
    w = open(acct, node);
  } catch (const RedisError& e) {
    complain(e.what(), "reading the head on every call meanwhile");
    std::lock_guard<std::mutex> hold(lock_);
    failed_at_[acct] = std::chrono::steady_clock::now();
    return 0;
  }
  uint64_t first = w->stamp;
  std::lock_guard<std::mutex> hold(lock_);
  auto& slot = watches_[acct];
  if (slot) slot->live = false;  // on a node that no longer serves the slot
  slot = w;
  failed_at_.erase(acct);
  added_.push_back(w);
  (void)!write(wake_[1], "w", 1);
  return first;
}

bool HeadWatch::unchanged(uint32_t acct, uint64_t stamp) {
  std::shared_ptr<Watch> w;
  {
    std::lock_guard<std::mutex> hold(lock_);
    auto it = watches_.find(acct);
    if (it == watches_.end()) return false;
    w = it->second;
  }
  // listen() moves the stamp before it reads a message, so a message is either still waiting or
  // has moved the stamp by the second look.
  return w->live && w->stamp == stamp && !waiting(w->c->fd) && w->stamp == stamp && w->live;
}

std::shared_ptr<HeadWatch::Watch> HeadWatch::open(uint32_t acct, const std::string& node) {
  auto w = std::make_shared<Watch>();
  w->node = node;
  w->c = redis_.connect(node);
  Reply id = command(w->c, {"CLIENT", "ID"});
  if (!id || id->type != REDIS_REPLY_INTEGER) throw RedisError(node + ": CLIENT ID failed");
  std::vector<std::string> track = {"CLIENT", "TRACKING", "ON", "REDIRECT", std::to_string(id->integer), "BCAST"};
  for (const char* what : LISTSEG_REDIS_LOCATE_KEYS) {
    track.push_back("PREFIX");
    track.push_back(account_key(acct, what));
  }
  for (const auto& args : {track, std::vector<std::string>{"SUBSCRIBE", "__redis__:invalidate"}}) {
    Reply r = command(w->c, args);
    if (!r || r->type == REDIS_REPLY_ERROR)
      throw RedisError(node + ": " + args[0] + " refused: " + (r ? std::string(r->str, r->len) : w->c->errstr));
  }
  w->stamp = w->done = ++changes_;  // taken after tracking is on: whatever is read from now on is watched
  return w;
}

void HeadWatch::listen() {
  std::vector<std::shared_ptr<Watch>> polled;
  std::vector<pollfd> fds;
  while (!stopping_) {
    fds.assign(1, pollfd{wake_[0], POLLIN, 0});
    for (const auto& w : polled) fds.push_back(pollfd{w->c->fd, POLLIN, 0});
    if (poll(fds.data(), fds.size(), 1000) < 0) continue;
    if (fds[0].revents) {
      char drain[64];
      (void)!read(wake_[0], drain, sizeof drain);
      std::lock_guard<std::mutex> hold(lock_);
      polled.insert(polled.end(), added_.begin(), added_.end());
      added_.clear();
    }
    for (size_t i = 1; i < fds.size(); i++) {
      if (!fds[i].revents) continue;
      Watch& w = *polled[i - 1];
      uint64_t stamp = ++changes_;
      w.stamp = stamp;  // before the read: see unchanged() and stamp()
      if (redisBufferRead(w.c) != REDIS_OK) {
        w.live = false;  // the node went away, or dropped us: nothing is known of its writes now
        continue;
      }
      void* msg = nullptr;
      while (redisGetReplyFromReader(w.c, &msg) == REDIS_OK && msg) {
        freeReplyObject(msg);
        msg = nullptr;
      }
      w.done = stamp;
    }
    polled.erase(std::remove_if(polled.begin(), polled.end(), [](const auto& w) { return !w->live; }), polled.end());
  }
}

}  // namespace listseg::front
