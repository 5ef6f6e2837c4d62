// Commands to the Redis Cluster node that serves each key's slot, or to one plain Redis node.
//
// Debian's hiredis (0.14) has no cluster client, so this one keeps the slot map (CLUSTER SLOTS) and
// a pool of connections per node. It does not follow MOVED or ASK, nor wait through a failover: it
// reads the slot map again and throws, and the front relays that call to the server, whose client
// waits through failovers (core/redis_client.py). So the front never answers from a node that has
// stopped serving a slot.
#pragma once

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdio>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace listseg::front {

struct FreeReply {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, FreeReply>;

struct Command {
  std::string key;                // decides the node: its hash tag's slot
  std::vector<std::string> args;  // the whole command, its name first
};

class RedisError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// printf into a string, for keys (core/layout.py's formats); throws RedisError past 512 bytes.
template <typename... Args>
std::string format(const char* fmt, Args... args) {
  char out[512];
  int n = std::snprintf(out, sizeof out, fmt, args...);
  if (n < 0 || size_t(n) >= sizeof out) throw RedisError("a key too long to build");
  return std::string(out, size_t(n));
}

// One command and its reply, on a blocking connection (null if the connection failed).
Reply command(redisContext* c, const std::vector<std::string>& args);

// The cluster slot of key: CRC16 (XMODEM) of its hash tag ({...}), or of the whole key, mod 16384.
uint16_t key_slot(const std::string& key);

class RedisCluster {
 public:
  // seeds: HOST:PORT; cluster false for one plain node (every slot its own). The password (and the
  // user name, for an ACL user) authenticate every connection; empty for none.
  RedisCluster(std::vector<std::string> seeds, bool cluster, std::string user, std::string password);
  ~RedisCluster();
  RedisCluster(const RedisCluster&) = delete;

  // The replies of `commands`, in order. Every command is sent before any reply is read, so
  // commands to different nodes wait for their answers together. Throws RedisError when a node
  // cannot be reached or answers MOVED, ASK or CLUSTERDOWN (the slot map is then read again).
  std::vector<Reply> run(const std::vector<Command>& commands);

  // The node (HOST:PORT) that serves key's slot now, as far as this client knows. Throws RedisError
  // as run() does.
  std::string node_of(const std::string& key);
  // A new authenticated blocking connection to node, for the caller to keep (redisFree it).
  redisContext* connect(const std::string& node);

 private:
  struct Topology {
    std::vector<std::string> nodes;  // HOST:PORT
    std::vector<int> owner;          // slot -> index in nodes, -1 for a slot no node serves
  };
  std::shared_ptr<const Topology> topology();
  std::shared_ptr<const Topology> read_topology();
  redisContext* acquire(const std::string& node);
  void release(const std::string& node, redisContext* c);

  const std::vector<std::string> seeds_;
  const bool cluster_;
  const std::string user_, password_;
  std::mutex lock_;  // guards all below
  std::shared_ptr<const Topology> topology_;
  bool stale_ = true;
  std::chrono::steady_clock::time_point read_at_;
  std::map<std::string, std::vector<redisContext*>> idle_;
};

}  // namespace listseg::front
