// What the front reads IsMember's answers from: the server's LMDB files (lmdb_source.h) or the
// Redis Cluster the servers store in (redis_source.h). Either answers only what it can answer
// exactly as the server would; for anything else (an error of any kind, an unknown account or
// segment) it says so, or throws, and the front relays the call to the server.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace listseg::front {

// A segment as a caller names it: "42", "segments/42" or a name (server/convert.py segment_ref).
struct SegmentRef {
  bool by_id = false;
  uint32_t id = 0;
  std::string name;
};

// False for a reference the server would refuse (empty, or an id of more than 9 digits).
inline bool parse_segment_ref(std::string ref, SegmentRef* out) {
  if (ref.rfind("segments/", 0) == 0) ref.erase(0, 9);
  if (ref.empty()) return false;
  if (ref.find_first_not_of("0123456789") == std::string::npos) {
    if (ref.size() > 9) return false;
    out->by_id = true;
    out->id = uint32_t(std::stoul(ref));
    return true;
  }
  out->name = ref;
  return true;
}

// A store error on stderr (the server's log), at most once a second: a failover fails every call.
// then: what the front does about it.
inline void complain(const char* what, const char* then = "relaying") {
  static std::atomic<int64_t> said_at{0};  // steady_clock ticks of the last line
  static std::atomic<long> quiet{0};       // errors not printed since
  int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
  int64_t last = said_at.load();
  if (now - last < std::chrono::nanoseconds(std::chrono::seconds(1)).count() ||
      !said_at.compare_exchange_strong(last, now)) {
    quiet++;
    return;
  }
  std::fprintf(stderr, "listseg-front: %s; %s (and %ld more since the last such line)\n", what, then,
               long(quiet.exchange(0)));
}

struct Answer {
  uint64_t version = 0;  // the segment's head: 0 when it has no version yet
  bool member = false;
};

class Source {
 public:
  virtual ~Source() = default;
  // True once any account has a passcode: then a caller names its account, and only passcodes the
  // server has accepted are let through. May throw (the store unreachable): the caller relays.
  virtual bool credentials_required() = 0;
  // Whether `key` (a guid if `guid`, else an identity; already trimmed) is a member of segment `ref`
  // of the account named `account`, at the segment's head, as core/members.py check_members
  // answers; false when only the server can answer. May throw: the caller relays.
  virtual bool is_member(const std::string& account, const SegmentRef& ref, bool guid, const std::string& key,
                         Answer* out) = 0;
};

}  // namespace listseg::front
