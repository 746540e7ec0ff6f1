#include "distributed/stall_report.h"

#include <algorithm>

namespace difftrain {

ArrivalBoard::ArrivalBoard(int world_size) : latest_(static_cast<size_t>(world_size), -1) {}

void ArrivalBoard::name(int64_t seq, const std::string& what) {
  names_[seq] = what;
  while (names_.size() > kNamesKept) names_.erase(names_.begin());
}

void ArrivalBoard::arrive(int rank, int64_t seq) {
  if (rank < 0 || rank >= static_cast<int>(latest_.size())) return;
  latest_[rank] = std::max(latest_[rank], seq);
}

std::vector<int> ArrivalBoard::missing(int64_t seq) const {
  std::vector<int> out;
  for (size_t r = 0; r < latest_.size(); ++r)
    if (latest_[r] < seq) out.push_back(static_cast<int>(r));
  return out;
}

std::string ArrivalBoard::label(int64_t seq) const {
  const auto it = names_.find(seq);
  return "#" + std::to_string(seq) + (it == names_.end() ? "" : " '" + it->second + "'");
}

std::string ArrivalBoard::describe_stall(int64_t seq, const std::vector<int>& silent) const {
  const auto absent = missing(seq);
  std::string text;
  if (absent.empty()) {
    text = "every rank joined collective " + label(seq) + ", yet it did not complete";
  } else {
    text = (absent.size() == 1 ? "rank " : "ranks ") + list_ranks(absent) + " did not join collective " +
           label(seq) + " (";
    for (size_t i = 0; i < absent.size(); ++i) {
      const int64_t last = latest_[absent[i]];
      if (i) text += "; ";
      text += "rank " + std::to_string(absent[i]) + ": " +
              (last < 0 ? std::string("joined none yet") : "last joined " + label(last));
    }
    text += ")";
  }
  if (!silent.empty())
    text += std::string("; ") + (silent.size() == 1 ? "rank " : "ranks ") + list_ranks(silent) +
            (silent.size() == 1 ? " does" : " do") + " not answer at all (stopped, crashed or unreachable)";
  else if (absent.empty())
    text += ": a network link between ranks is down or too slow";
  return text;
}

std::string list_ranks(const std::vector<int>& ranks) {
  std::string text;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) text += (i + 1 == ranks.size()) ? " and " : ", ";
    text += std::to_string(ranks[i]);
  }
  return text;
}

}  // namespace difftrain
