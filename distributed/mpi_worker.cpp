#include "distributed/mpi_worker.h"

#include <algorithm>
#include <cstring>
#include <future>

namespace difftrain {
namespace {

using Clock = std::chrono::steady_clock;

// Tags on the watch communicator.
constexpr int kArrivalTag = 1;  // int64 seq: "I entered collective seq" (to rank 0)
constexpr int kQueryTag = 2;    // int64 seq: "who did not join seq?" (to rank 0)
constexpr int kReplyTag = 3;    // text: rank 0's answer
constexpr int kPingTag = 4;     // int64 token: "are you there?" (from rank 0)
constexpr int kPongTag = 5;     // int64 token: "yes" (to rank 0)

// How long rank 0 waits for a ping's answers, and a rank whose collective timed
// out for rank 0's account (which includes a ping).
constexpr double kPingGraceSeconds = 2.0;
constexpr double kReplyGraceSeconds = 5.0;
// How often an idle worker looks at the watch communicator.
constexpr auto kIdleServiceInterval = std::chrono::milliseconds(5);

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  return std::string(text, static_cast<size_t>(length));
}

std::string seconds_text(double s) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", s);
  return buffer;
}

// Polling: yield first (small collectives finish in microseconds), then sleep
// with back-off so a long wait costs no CPU the training thread could use.
void pause(int64_t polls) {
  if (polls < 64) {
    std::this_thread::yield();
    return;
  }
  const int64_t shift = std::min<int64_t>(polls - 64, 5);
  std::this_thread::sleep_for(std::chrono::microseconds(std::min<int64_t>(500, int64_t{20} << shift)));
}

std::vector<char> int64_payload(int64_t value) {
  std::vector<char> bytes(sizeof value);
  std::memcpy(bytes.data(), &value, sizeof value);
  return bytes;
}

}  // namespace

// ---- CollectiveTicket ------------------------------------------------------

void CollectiveTicket::wait() {
  std::unique_lock<std::mutex> lock(mutex_);
  const bool finished = finished_.wait_for(lock, std::chrono::duration<double>(patience_seconds_),
                                           [&] { return done_; });
  if (!finished)
    throw CollectiveError("collective '" + what_ + "' (#" + std::to_string(seq_) +
                          "): the communication thread did not answer within " + seconds_text(patience_seconds_) +
                          " s");
  if (!error_.empty()) throw CollectiveError(error_);
}

bool CollectiveTicket::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return done_;
}

double CollectiveTicket::seconds() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return seconds_;
}

void CollectiveTicket::finish(double seconds, std::string error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
    seconds_ = seconds;
    error_ = std::move(error);
  }
  finished_.notify_all();
}

// ---- MpiWorker ---------------------------------------------------------------

struct MpiWorker::Item {
  enum class Kind { kCollective, kNote, kQuery } kind;
  int64_t seq = -1;
  std::string what;
  Start start;                                // kCollective
  std::shared_ptr<CollectiveTicket> ticket;   // kCollective
  std::promise<std::string> answer;           // kQuery
};

MpiWorker::MpiWorker(double timeout_seconds) : timeout_seconds_(timeout_seconds), board_(1) {
  if (!(timeout_seconds > 0)) throw std::invalid_argument("collective timeout must be > 0 seconds");
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size_);
  board_ = ArrivalBoard(world_size_);
  pongs_.assign(static_cast<size_t>(world_size_), -1);
  MPI_Comm_dup(MPI_COMM_WORLD, &collectives_);
  MPI_Comm_dup(MPI_COMM_WORLD, &watch_);
  // Errors come back as codes, so they become CollectiveErrors naming the operation.
  MPI_Comm_set_errhandler(collectives_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(watch_, MPI_ERRORS_RETURN);
  thread_ = std::thread([this] { run(); });
}

MpiWorker::~MpiWorker() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_.notify_all();
  thread_.join();
  MPI_Comm_free(&watch_);
  MPI_Comm_free(&collectives_);
}

std::shared_ptr<CollectiveTicket> MpiWorker::submit(std::string what, Start start) {
  auto item = std::make_shared<Item>();
  item->kind = Item::Kind::kCollective;
  item->start = std::move(start);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    item->seq = next_seq_++;
    item->what = std::move(what);
    // Past the deadline the worker fails the ticket itself; the extra margin only
    // covers a worker that stopped answering altogether.
    item->ticket.reset(new CollectiveTicket(item->what, item->seq, timeout_seconds_ + 2 * kReplyGraceSeconds + 30));
    queue_.push_back(item);
  }
  work_.notify_one();
  return item->ticket;
}

int64_t MpiWorker::note_external(std::string what) {
  auto item = std::make_shared<Item>();
  item->kind = Item::Kind::kNote;
  int64_t seq;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    seq = item->seq = next_seq_++;
    item->what = std::move(what);
    queue_.push_back(item);
  }
  work_.notify_one();
  return seq;
}

std::string MpiWorker::stall_report(int64_t seq) {
  auto item = std::make_shared<Item>();
  item->kind = Item::Kind::kQuery;
  item->seq = seq;
  auto answer = item->answer.get_future();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Ahead of queued work: the queue may be stuck behind the very collective asked about.
    queue_.push_front(item);
  }
  work_.notify_one();
  if (answer.wait_for(std::chrono::duration<double>(2 * kReplyGraceSeconds)) != std::future_status::ready)
    return "no account of the other ranks: this rank's communication thread did not answer";
  return answer.get();
}

void MpiWorker::run() {
  for (;;) {
    std::shared_ptr<Item> item;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_.wait_for(lock, kIdleServiceInterval, [&] { return stop_ || !queue_.empty(); });
      if (!queue_.empty()) {
        item = queue_.front();
        queue_.pop_front();
      } else if (stop_) {
        break;
      }
    }
    if (!item) {
      service_watch();
      answer_queries();
      continue;
    }
    switch (item->kind) {
      case Item::Kind::kNote:
        announce(item->seq, item->what);
        break;
      case Item::Kind::kQuery:
        item->answer.set_value(rank_ == 0 ? board_.describe_stall(item->seq, silent_ranks()) : ask_rank0(item->seq));
        break;
      case Item::Kind::kCollective:
        run_collective(*item);
        break;
    }
  }
  // Orderly end: our last notes are small (sent eagerly); give them a moment, then let go.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (!sends_.empty() && Clock::now() < deadline) {
    service_watch();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& send : sends_) MPI_Request_free(&send.request);
  sends_.clear();
}

void MpiWorker::announce(int64_t seq, const std::string& what) {
  if (rank_ == 0) {
    board_.name(seq, what);
    board_.arrive(0, seq);
  } else if (broken_.empty()) {
    send_watch(0, kArrivalTag, int64_payload(seq));
  }
}

void MpiWorker::send_watch(int destination, int tag, std::vector<char> payload) {
  PendingSend send{std::make_unique<std::vector<char>>(std::move(payload)), MPI_REQUEST_NULL};
  if (MPI_Isend(send.payload->data(), static_cast<int>(send.payload->size()), MPI_BYTE, destination, tag, watch_,
                &send.request) == MPI_SUCCESS)
    sends_.push_back(std::move(send));
}

void MpiWorker::service_watch() {
  for (auto it = sends_.begin(); it != sends_.end();) {
    int flag = 0;
    if (MPI_Test(&it->request, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || flag)
      it = sends_.erase(it);
    else
      ++it;
  }
  for (;;) {
    int flag = 0;
    MPI_Status status;
    // Rank 0 hears from everyone; the others only answer rank 0's pings (its replies are
    // received in ask_rank0).
    if (rank_ == 0) {
      if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, watch_, &flag, &status) != MPI_SUCCESS || !flag) return;
    } else if (MPI_Iprobe(0, kPingTag, watch_, &flag, &status) != MPI_SUCCESS || !flag) {
      return;
    }
    const int tag = status.MPI_TAG, source = status.MPI_SOURCE;
    if (tag == kReplyTag) {  // not for rank 0 (cannot happen): receive it so it does not block the probe
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      std::vector<char> sink(static_cast<size_t>(std::max(count, 1)));
      MPI_Recv(sink.data(), count, MPI_BYTE, source, tag, watch_, MPI_STATUS_IGNORE);
      continue;
    }
    int64_t value = -1;
    MPI_Recv(&value, sizeof value, MPI_BYTE, source, tag, watch_, MPI_STATUS_IGNORE);
    if (tag == kArrivalTag) board_.arrive(source, value);
    else if (tag == kQueryTag) queries_.emplace_back(source, value);
    else if (tag == kPongTag) pongs_[static_cast<size_t>(source)] = value;
    else if (tag == kPingTag) send_watch(0, kPongTag, int64_payload(value));
  }
}

std::vector<int> MpiWorker::silent_ranks() {
  const int64_t token = ++ping_token_;
  for (int r = 1; r < world_size_; ++r) send_watch(r, kPingTag, int64_payload(token));
  const auto deadline = Clock::now() + std::chrono::duration<double>(kPingGraceSeconds);
  auto silent = [&] {
    std::vector<int> out;
    for (int r = 1; r < world_size_; ++r)
      if (pongs_[static_cast<size_t>(r)] != token) out.push_back(r);
    return out;
  };
  while (!silent().empty() && Clock::now() < deadline) {
    service_watch();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return silent();
}

void MpiWorker::answer_queries() {
  if (rank_ != 0 || queries_.empty()) return;
  const auto silent = silent_ranks();  // one ping for every query waiting
  for (const auto& [asker, seq] : queries_) {
    const std::string text = board_.describe_stall(seq, silent);
    send_watch(asker, kReplyTag, std::vector<char>(text.begin(), text.end()));
  }
  queries_.clear();
}

std::string MpiWorker::ask_rank0(int64_t seq) {
  send_watch(0, kQueryTag, int64_payload(seq));
  const auto deadline = Clock::now() + std::chrono::duration<double>(kReplyGraceSeconds);
  while (Clock::now() < deadline) {
    service_watch();
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(0, kReplyTag, watch_, &flag, &status) == MPI_SUCCESS && flag) {
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      std::string text(static_cast<size_t>(count), '\0');
      MPI_Recv(text.data(), count, MPI_BYTE, 0, kReplyTag, watch_, MPI_STATUS_IGNORE);
      return "rank 0 reports: " + text;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return "rank 0, which keeps track of arrivals, did not answer within " + seconds_text(kReplyGraceSeconds) +
         " s: it is unreachable, stuck, or did not join";
}

void MpiWorker::fail_broken(Item& item) {
  item.ticket->finish(0, "collective '" + item.what + "' (#" + std::to_string(item.seq) +
                             ") not started: an earlier one failed: " + broken_);
}

void MpiWorker::run_collective(Item& item) {
  if (!broken_.empty()) return fail_broken(item);
  announce(item.seq, item.what);
  const std::string label = "collective '" + item.what + "' (#" + std::to_string(item.seq) + ")";
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_seconds_);
  MPI_Request request = MPI_REQUEST_NULL;
  int code = item.start(collectives_, &request);
  int64_t polls = 0;
  while (code == MPI_SUCCESS) {
    int flag = 0;
    code = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
    if (code != MPI_SUCCESS) break;
    if (flag) {
      item.ticket->finish(std::chrono::duration<double>(Clock::now() - start).count(), "");
      return;
    }
    service_watch();
    answer_queries();
    if (Clock::now() >= deadline) {
      const std::string report =
          rank_ == 0 ? board_.describe_stall(item.seq, silent_ranks()) : ask_rank0(item.seq);
      broken_ = label + " did not complete within " + seconds_text(timeout_seconds_) + " s on rank " +
                std::to_string(rank_) + " (distributed.timeout_seconds): " + report;
      item.ticket->finish(std::chrono::duration<double>(Clock::now() - start).count(), broken_);
      return;
    }
    pause(polls++);
  }
  broken_ = label + " failed on rank " + std::to_string(rank_) + ": " + mpi_error_text(code);
  item.ticket->finish(std::chrono::duration<double>(Clock::now() - start).count(), broken_);
}

}  // namespace difftrain
