// IsMember's answers from the Redis Cluster (or plain Redis node) the servers store in, with the
// keys of core/layout.py's Redis section.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "source.h"

namespace listseg::front {

// seeds: HOST:PORT of some nodes; cluster false for one plain node.
std::unique_ptr<Source> open_redis(std::vector<std::string> seeds, bool cluster, std::string user,
                                   std::string password);

}  // namespace listseg::front
