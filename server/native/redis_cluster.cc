#include "redis_cluster.h"

namespace listseg::front {
namespace {

constexpr int kSlots = 16384;
constexpr auto kConnectTimeout = std::chrono::milliseconds(500);
constexpr auto kCommandTimeout = std::chrono::seconds(1);  // then the server answers (it is patient)
constexpr auto kReread = std::chrono::milliseconds(100);   // the slot map is read at most this often
constexpr size_t kMaxIdle = 64;                            // idle connections kept per node
// Error replies that mean "this node does not serve that slot now": a failover or a resharding.
const char* const kMoved[] = {"MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN", "LOADING", "MASTERDOWN"};

timeval as_timeval(std::chrono::microseconds t) {
  return timeval{time_t(t.count() / 1000000), suseconds_t(t.count() % 1000000)};
}

uint16_t crc16(const char* p, size_t n) {  // CRC16-CCITT (XMODEM), as Redis Cluster hashes keys
  uint16_t crc = 0;
  for (size_t i = 0; i < n; i++) {
    crc ^= uint16_t(uint8_t(p[i])) << 8;
    for (int b = 0; b < 8; b++) crc = (crc & 0x8000) ? uint16_t((crc << 1) ^ 0x1021) : uint16_t(crc << 1);
  }
  return crc;
}

bool moved(const redisReply* r) {
  if (r->type != REDIS_REPLY_ERROR) return false;
  for (const char* word : kMoved)
    if (std::string(r->str, r->len).rfind(word, 0) == 0) return true;
  return false;
}

// Queues a command on c's output buffer (sent by the next write or reply read).
void append(redisContext* c, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  redisAppendCommandArgv(c, int(args.size()), argv.data(), lens.data());
}

// The connections one run() took, freed on the way out unless handed back clean.
struct Taken {
  std::vector<std::pair<std::string, redisContext*>> conns;
  ~Taken() {
    for (auto& [node, c] : conns)
      if (c) redisFree(c);
  }
};

}  // namespace

Reply command(redisContext* c, const std::vector<std::string>& args) {
  append(c, args);
  void* raw = nullptr;
  return Reply(redisGetReply(c, &raw) == REDIS_OK ? static_cast<redisReply*>(raw) : nullptr);
}

uint16_t key_slot(const std::string& key) {
  size_t open = key.find('{');
  if (open != std::string::npos) {
    size_t close = key.find('}', open + 1);
    if (close != std::string::npos && close > open + 1) return crc16(key.data() + open + 1, close - open - 1) % kSlots;
  }
  return crc16(key.data(), key.size()) % kSlots;
}

RedisCluster::RedisCluster(std::vector<std::string> seeds, bool cluster, std::string user, std::string password)
    : seeds_(std::move(seeds)), cluster_(cluster), user_(std::move(user)), password_(std::move(password)) {
  if (seeds_.empty()) throw std::runtime_error("no Redis node given");
}

RedisCluster::~RedisCluster() {
  for (auto& [node, conns] : idle_)
    for (redisContext* c : conns) redisFree(c);
}

redisContext* RedisCluster::connect(const std::string& node) {
  size_t colon = node.rfind(':');
  std::string host = colon == std::string::npos ? node : node.substr(0, colon);
  int port = colon == std::string::npos ? 6379 : std::stoi(node.substr(colon + 1));
  redisContext* c = redisConnectWithTimeout(host.c_str(), port, as_timeval(kConnectTimeout));
  if (!c || c->err) {
    std::string why = c ? c->errstr : "out of memory";
    if (c) redisFree(c);
    throw RedisError("cannot connect to " + node + ": " + why);
  }
  redisSetTimeout(c, as_timeval(kCommandTimeout));
  if (!password_.empty()) {
    std::vector<std::string> auth = {"AUTH"};
    if (!user_.empty()) auth.push_back(user_);
    auth.push_back(password_);
    Reply r = command(c, auth);
    if (!r || r->type == REDIS_REPLY_ERROR) {
      std::string why = r ? std::string(r->str, r->len) : c->errstr;
      redisFree(c);
      throw RedisError("AUTH on " + node + ": " + why);
    }
  }
  return c;
}

redisContext* RedisCluster::acquire(const std::string& node) {
  {
    std::lock_guard<std::mutex> hold(lock_);
    auto& idle = idle_[node];
    if (!idle.empty()) {
      redisContext* c = idle.back();
      idle.pop_back();
      return c;
    }
  }
  return connect(node);
}

void RedisCluster::release(const std::string& node, redisContext* c) {
  if (!c->err) {
    std::lock_guard<std::mutex> hold(lock_);
    auto& idle = idle_[node];
    if (idle.size() < kMaxIdle) {
      idle.push_back(c);
      return;
    }
  }
  redisFree(c);
}

std::shared_ptr<const RedisCluster::Topology> RedisCluster::read_topology() {
  auto fresh = std::make_shared<Topology>();
  if (!cluster_) {
    fresh->nodes = {seeds_[0]};
    fresh->owner.assign(kSlots, 0);
    return fresh;
  }
  std::vector<std::string> asked = seeds_;
  {
    std::lock_guard<std::mutex> hold(lock_);
    if (topology_) asked.insert(asked.begin(), topology_->nodes.begin(), topology_->nodes.end());
  }
  std::string last = "no node answered";
  for (const std::string& node : asked) {
    redisContext* c;
    try {
      c = connect(node);
    } catch (const RedisError& e) {
      last = e.what();
      continue;
    }
    Reply r = command(c, {"CLUSTER", "SLOTS"});
    std::string host = node.substr(0, node.rfind(':'));
    redisFree(c);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
      last = node + " gave no slot map";
      continue;
    }
    fresh->owner.assign(kSlots, -1);
    std::map<std::string, int> index;
    for (size_t i = 0; i < r->elements; i++) {
      const redisReply* range = r->element[i];
      if (range->type != REDIS_REPLY_ARRAY || range->elements < 3) continue;
      const redisReply* primary = range->element[2];
      if (primary->type != REDIS_REPLY_ARRAY || primary->elements < 2) continue;
      std::string ip(primary->element[0]->str ? primary->element[0]->str : "", primary->element[0]->len);
      std::string at = (ip.empty() ? host : ip) + ":" + std::to_string(primary->element[1]->integer);
      auto [it, added] = index.emplace(at, int(fresh->nodes.size()));
      if (added) fresh->nodes.push_back(at);
      for (long long s = range->element[0]->integer; s <= range->element[1]->integer && s < kSlots; s++)
        if (s >= 0) fresh->owner[s] = it->second;
    }
    return fresh;
  }
  throw RedisError("cannot read the cluster's slot map: " + last);
}

std::shared_ptr<const RedisCluster::Topology> RedisCluster::topology() {
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> hold(lock_);
    if (!stale_) return topology_;
    if (now - read_at_ < kReread) throw RedisError("the cluster's slot map is being read again");
    read_at_ = now;  // one reader at a time: the others relay meanwhile
  }
  auto fresh = read_topology();
  std::lock_guard<std::mutex> hold(lock_);
  topology_ = fresh;
  stale_ = false;
  return fresh;
}

std::string RedisCluster::node_of(const std::string& key) {
  auto topo = topology();
  int owner = topo->owner[key_slot(key)];
  if (owner < 0) {
    std::lock_guard<std::mutex> hold(lock_);
    stale_ = true;
    throw RedisError("no node serves the slot of " + key);
  }
  return topo->nodes[owner];
}

std::vector<Reply> RedisCluster::run(const std::vector<Command>& commands) {
  auto topo = topology();
  Taken taken;
  std::vector<size_t> conn_of;
  auto fail = [&](const std::string& why) {
    std::lock_guard<std::mutex> hold(lock_);
    stale_ = true;
    return RedisError(why);
  };
  for (const Command& cmd : commands) {
    int owner = topo->owner[key_slot(cmd.key)];
    if (owner < 0) throw fail("no node serves the slot of " + cmd.key);
    const std::string& node = topo->nodes[owner];
    size_t at = 0;
    while (at < taken.conns.size() && taken.conns[at].first != node) at++;
    if (at == taken.conns.size()) {
      try {
        taken.conns.emplace_back(node, acquire(node));
      } catch (const RedisError& e) {
        throw fail(e.what());
      }
    }
    conn_of.push_back(at);
    append(taken.conns[at].second, cmd.args);
  }
  for (auto& [node, c] : taken.conns) {
    int done = 0;
    while (!done)
      if (redisBufferWrite(c, &done) == REDIS_ERR) throw fail(node + ": " + c->errstr);
  }
  std::vector<Reply> replies;
  for (size_t i = 0; i < commands.size(); i++) {
    auto& [node, c] = taken.conns[conn_of[i]];
    void* raw = nullptr;
    if (redisGetReply(c, &raw) != REDIS_OK || !raw) throw fail(node + ": " + c->errstr);
    replies.emplace_back(static_cast<redisReply*>(raw));
    if (moved(replies.back().get())) throw fail(node + ": " + std::string(replies.back()->str, replies.back()->len));
  }
  for (auto& [node, c] : taken.conns) {
    release(node, c);
    c = nullptr;
  }
  return replies;
}

}  // namespace listseg::front
