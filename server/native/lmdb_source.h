// IsMember's answers from the server's LMDB files (core/store.py DATABASES), read-only.
#pragma once

#include <memory>
#include <string>

#include "source.h"

namespace listseg::front {

std::unique_ptr<Source> open_lmdb(const std::string& path);

}  // namespace listseg::front
