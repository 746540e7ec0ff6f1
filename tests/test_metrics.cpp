// TrainingMetrics is tested the way Prometheus sees it: a plain HTTP GET of
// /metrics; pushes the way a Pushgateway sees them (FakeGateway records each
// request). The dashboard is checked against the names a real scrape exports.
// tests/monitoring_server_tests.py runs the same against real Prometheus and
// Pushgateway servers and real training jobs.
#include "monitoring/job_push.h"
#include "monitoring/metrics.h"
#include "monitoring/progress.h"
#include "monitoring/pushgateway.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <prometheus/registry.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace dm = difftrain::monitoring;

namespace {

int port_of(const std::string& address) { return std::stoi(address.substr(address.rfind(':') + 1)); }

// Connected TCP socket to 127.0.0.1:port. A 10 s receive timeout makes a
// server that never answers fail the test instead of hanging it.
int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    throw std::runtime_error("connect to port " + std::to_string(port) + " failed");
  }
  return fd;
}

// Sends `request` verbatim and reads until the server closes the connection.
std::string http_raw(int port, const std::string& request) {
  const int fd = connect_to(port);
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string reply;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) reply.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return reply;
}

// HTTP/1.0 so the server closes the connection and "read until EOF" is the whole reply.
std::string http_get(int port, const std::string& path) {
  return http_raw(port, "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
}

std::string status_line(const std::string& reply) { return reply.substr(0, reply.find("\r\n")); }

std::string header_block(const std::string& reply) { return reply.substr(0, reply.find("\r\n\r\n") + 2); }

std::string body_of(const std::string& reply) {
  const auto end = reply.find("\r\n\r\n");
  return end == std::string::npos ? std::string() : reply.substr(end + 4);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

std::string scrape(const dm::TrainingMetrics& metrics) {
  const std::string reply = http_get(port_of(metrics.bound_address()), "/metrics");
  EXPECT_NE(reply.find("200 OK"), std::string::npos) << reply;
  return reply;
}

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text + "\n").find("\n" + line + "\n") != std::string::npos;
}

std::set<std::string> difftrain_names(const std::string& text) {
  static const std::regex name(R"(difftrain_[A-Za-z0-9_]*)");
  std::set<std::string> names;
  for (std::sregex_iterator it(text.begin(), text.end(), name), end; it != end; ++it)
    names.insert(it->str());
  return names;
}

dm::StepStats example_step() {
  dm::StepStats s;
  s.loss = 0.25;
  s.learning_rate = 0.0001;
  s.step_seconds = 0.5;
  s.images_per_second = 128;
  s.grad_norm = 1.5;
  s.loss_scale = 65536;
  s.images = 64;
  s.comm_wait_seconds = 0.125;
  return s;
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Label block of every series of a TrainingMetrics made by make_metrics (prometheus-cpp sorts labels).
std::string labels_of(int rank) { return R"(host="test-host",rank=")" + std::to_string(rank) + R"(",run="test-run")"; }

dm::MetricsOptions options_for(const std::string& address, int rank, const std::string& pushgateway = "") {
  dm::MetricsOptions o;
  o.bind_address = address;
  o.rank = rank;
  o.run = "test-run";
  o.host = "test-host";
  o.pushgateway = pushgateway;
  return o;
}

std::unique_ptr<dm::TrainingMetrics> make_metrics(const std::string& address, int rank) {
  return std::make_unique<dm::TrainingMetrics>(options_for(address, rank));
}

// The value of the one sample `name{labels}` in a scrape; NaN text gives NaN; throws when absent.
double sample_value(const std::string& text, const std::string& series) {
  const std::string key = "\n" + series + " ";
  const std::string haystack = "\n" + text;
  const auto at = haystack.find(key);
  if (at == std::string::npos) throw std::runtime_error("no sample " + series);
  const auto start = at + key.size();
  return std::stod(haystack.substr(start, haystack.find('\n', start) - start));
}

bool has_sample(const std::string& text, const std::string& name) {
  return ("\n" + text).find("\n" + name + "{") != std::string::npos;
}

// A stand-in Pushgateway: answers every request with `status` (or never, when
// silent) and keeps each request's method, path and body.
class FakeGateway {
 public:
  struct Request {
    std::string method, path, body;
  };

  explicit FakeGateway(int status = 200, bool silent = false) : status_(status), silent_(silent) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 8) != 0)
      throw std::runtime_error("fake gateway cannot listen");
    socklen_t len = sizeof addr;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeGateway() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::vector<Request> requests() {
    std::lock_guard<std::mutex> lock(mutex_);
    return requests_;
  }

 private:
  void serve() {
    while (!stop_) {
      const int client = ::accept(fd_, nullptr, nullptr);
      if (client < 0) return;
      timeval timeout{5, 0};
      ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
      std::string data;
      char buf[4096];
      size_t body_at = std::string::npos, length = 0;
      for (ssize_t n; (n = ::recv(client, buf, sizeof buf, 0)) > 0;) {
        data.append(buf, static_cast<size_t>(n));
        if (body_at == std::string::npos && (body_at = data.find("\r\n\r\n")) != std::string::npos) {
          body_at += 4;
          static const std::regex content_length("Content-Length: *([0-9]+)", std::regex::icase);
          std::smatch m;
          const std::string head = data.substr(0, body_at);
          if (std::regex_search(head, m, content_length)) length = std::stoul(m[1]);
        }
        if (body_at != std::string::npos && data.size() >= body_at + length) break;
      }
      Request r;
      const auto space = data.find(' ');
      r.method = data.substr(0, space);
      r.path = data.substr(space + 1, data.find(' ', space + 1) - space - 1);
      if (body_at != std::string::npos) r.body = data.substr(body_at);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        requests_.push_back(r);
      }
      if (silent_) {
        while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      } else {
        const std::string reply = "HTTP/1.1 " + std::to_string(status_) + " X\r\nContent-Length: 0\r\n\r\n";
        ::send(client, reply.data(), reply.size(), MSG_NOSIGNAL);
      }
      ::close(client);
    }
  }

  int status_;
  bool silent_;
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::vector<Request> requests_;
  std::thread thread_;
};

// A port nothing listens on: bound, then closed.
int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

}  // namespace

TEST(TrainingMetrics, ScrapeShowsRecordedStep) {
  auto metrics = make_metrics("127.0.0.1:0", 3);
  EXPECT_NE(port_of(metrics->bound_address()), 0);
  EXPECT_EQ(metrics->bound_address().rfind("127.0.0.1:", 0), 0u);

  const double before = unix_now();
  dm::StepStats first = example_step();
  first.step = 1;
  first.images_seen = 256;
  metrics->record_step(first);
  dm::StepStats skipped = example_step();
  skipped.skipped = true;
  skipped.grad_norm = 0;  // not computed for a skipped step: the gauge keeps the last applied one
  skipped.step = 2;
  skipped.images_seen = 512;
  metrics->record_step(skipped);
  const double after = unix_now();

  const std::string text = scrape(*metrics);
  const std::string l = "{" + labels_of(3) + "}";
  for (const std::string line : {
           "difftrain_loss" + l + " 0.25",
           "difftrain_learning_rate" + l + " 0.0001",
           "difftrain_step_seconds" + l + " 0.5",
           "difftrain_comm_wait_seconds" + l + " 0.125",
           "difftrain_images_per_second" + l + " 128",
           "difftrain_grad_norm" + l + " 1.5",
           "difftrain_loss_scale" + l + " 65536",
           "difftrain_step" + l + " 2",
           "difftrain_images_seen" + l + " 512",
           "difftrain_steps_total" + l + " 2",
           "difftrain_images_total" + l + " 128",
           "difftrain_skipped_steps_total" + l + " 1",
           "difftrain_nonfinite_steps_total" + l + " 0",
           "difftrain_rollbacks_total" + l + " 0",
           std::string("# TYPE difftrain_steps_total counter"),
           std::string("# TYPE difftrain_loss gauge"),
       }) {
    EXPECT_TRUE(has_line(text, line)) << "missing: " << line << "\n" << text;
  }
  const double last_step = sample_value(text, "difftrain_last_step_timestamp_seconds" + l);
  EXPECT_GE(last_step, before - 0.001);
  EXPECT_LE(last_step, after + 0.001);
}

TEST(TrainingMetrics, EverySeriesCarriesRunHostAndRank) {
  auto metrics = make_metrics("127.0.0.1:0", 1);
  metrics->record_step(example_step());
  metrics->set_fid(12.5);
  const std::string text = body_of(scrape(*metrics));
  int samples = 0;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line[0] == '#') continue;
    ++samples;
    EXPECT_NE(line.find(labels_of(1)), std::string::npos) << line << "\n" << text;
  }
  EXPECT_GE(samples, 20);
}

TEST(TrainingMetrics, HostDefaultsToTheHostname) {
  dm::MetricsOptions o = options_for("127.0.0.1:0", 0);
  o.host.clear();
  dm::TrainingMetrics metrics(o);
  char name[256] = {};
  ASSERT_EQ(::gethostname(name, sizeof name - 1), 0);
  EXPECT_TRUE(has_line(scrape(metrics), R"(difftrain_step{host=")" + std::string(name) + R"(",rank="0",run="test-run"} 0)"));
}

TEST(TrainingMetrics, GaugesWithoutAValueAreNotExported) {
  auto metrics = make_metrics("127.0.0.1:0", 0);
  const std::string text = scrape(*metrics);
  for (const char* name : {"difftrain_loss", "difftrain_learning_rate", "difftrain_step_seconds",
                           "difftrain_comm_wait_seconds", "difftrain_images_per_second", "difftrain_grad_norm",
                           "difftrain_loss_scale", "difftrain_last_step_timestamp_seconds", "difftrain_fid"})
    EXPECT_FALSE(has_sample(text, name)) << name << " has no value yet and must not read 0:\n" << text;
  // What is known from the start is exported from the start.
  const std::string l = "{" + labels_of(0) + "}";
  EXPECT_TRUE(has_line(text, "difftrain_step" + l + " 0")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_steps_total" + l + " 0")) << text;
  EXPECT_TRUE(has_line(text, R"(difftrain_job_state{host="test-host",rank="0",run="test-run",state="running"} 1)"))
      << text;
  // A grad norm appears only with an applied step.
  dm::StepStats skipped = example_step();
  skipped.skipped = true;
  metrics->record_step(skipped);
  EXPECT_FALSE(has_sample(scrape(*metrics), "difftrain_grad_norm"));
  metrics->set_fid(7.25);
  EXPECT_TRUE(has_line(scrape(*metrics), "difftrain_fid" + l + " 7.25"));
}

TEST(TrainingMetrics, ProcessStartTimeIsThisProcesssStart) {
  auto metrics = make_metrics("127.0.0.1:0", 0);
  const double start = sample_value(scrape(*metrics), "difftrain_process_start_time_seconds{" + labels_of(0) + "}");
  // This test process started a little before now, not at the epoch and not in the future.
  EXPECT_LE(start, unix_now() + 1);
  EXPECT_GT(start, unix_now() - 3600);
  EXPECT_EQ(start, dm::process_start_time_seconds());
}

// A resumed run: its totals are gauges, and the counters start at 0, so
// rate(difftrain_steps_total) sees an ordinary counter reset, not a jump.
TEST(TrainingMetrics, ResumeSetsTotalsAsGaugesAndCountersStartAtZero) {
  auto metrics = make_metrics("127.0.0.1:0", 0);
  metrics->start(1000, 64000);
  const std::string l = "{" + labels_of(0) + "}";
  std::string text = scrape(*metrics);
  EXPECT_TRUE(has_line(text, "difftrain_step" + l + " 1000")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_images_seen" + l + " 64000")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_steps_total" + l + " 0")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_images_total" + l + " 0")) << text;
  dm::StepStats next = example_step();
  next.step = 1001;
  next.images_seen = 64064;
  metrics->record_step(next);
  text = scrape(*metrics);
  EXPECT_TRUE(has_line(text, "difftrain_step" + l + " 1001")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_images_seen" + l + " 64064")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_steps_total" + l + " 1")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_images_total" + l + " 64")) << text;
}

TEST(TrainingMetrics, NonfiniteStepsAndRollbacksAreCounted) {
  auto metrics = make_metrics("127.0.0.1:0", 0);
  metrics->record_step(example_step());
  dm::StepStats bad = example_step();
  bad.loss = std::numeric_limits<double>::quiet_NaN();
  bad.grad_norm = std::numeric_limits<double>::infinity();
  bad.skipped = true;
  bad.nonfinite = true;
  metrics->record_step(bad);
  // Finite loss, non-finite gradients: counted from the flag.
  dm::StepStats bad_gradients = example_step();
  bad_gradients.skipped = true;
  bad_gradients.nonfinite = true;
  metrics->record_step(bad_gradients);
  // The streak's last step ends in a rollback instead of completing.
  metrics->record_nonfinite_step();
  metrics->record_rollback();
  const std::string l = "{" + labels_of(0) + "}";
  std::string text = scrape(*metrics);
  EXPECT_TRUE(has_line(text, "difftrain_nonfinite_steps_total" + l + " 3")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_skipped_steps_total" + l + " 3")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_rollbacks_total" + l + " 1")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_steps_total" + l + " 3")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_grad_norm" + l + " 1.5")) << "last applied step's norm\n" << text;
  // A non-finite loss is never exported without the counter: even if the trainer did not flag it.
  dm::StepStats unflagged = example_step();
  unflagged.loss = std::numeric_limits<double>::infinity();
  metrics->record_step(unflagged);
  text = scrape(*metrics);
  EXPECT_TRUE(has_line(text, "difftrain_nonfinite_steps_total" + l + " 4")) << text;
  EXPECT_TRUE(has_line(text, "difftrain_loss" + l + " +Inf")) << text;
}

TEST(TrainingMetrics, JobStateIsOneSeriesPerStateWithOneSet) {
  const auto state_lines = [](const std::string& text) {
    std::map<std::string, double> states;
    static const std::regex line(R"re(difftrain_job_state\{[^}]*state="([a-z]+)"\} ([0-9]+))re");
    for (std::sregex_iterator it(text.begin(), text.end(), line), end; it != end; ++it)
      states[(*it)[1]] = std::stod((*it)[2]);
    return states;
  };
  auto metrics = make_metrics("127.0.0.1:0", 0);
  using States = std::map<std::string, double>;
  EXPECT_EQ(state_lines(scrape(*metrics)), (States{{"failed", 0}, {"finished", 0}, {"running", 1}, {"stopped", 0}}));
  metrics->finish(dm::JobState::kStopped);
  EXPECT_EQ(state_lines(scrape(*metrics)), (States{{"failed", 0}, {"finished", 0}, {"running", 0}, {"stopped", 1}}));
  metrics->finish(dm::JobState::kFinished);
  EXPECT_EQ(state_lines(scrape(*metrics)), (States{{"failed", 0}, {"finished", 1}, {"running", 0}, {"stopped", 0}}));
}

TEST(TrainingMetrics, PushesRunningAtStartAndFinalStateAtTheEnd) {
  FakeGateway gateway;
  {
    dm::TrainingMetrics metrics(options_for("", 2, gateway.address()));
    EXPECT_EQ(metrics.bound_address(), "");  // pushing only, no endpoint
    EXPECT_TRUE(gateway.requests().empty()) << "nothing is pushed before start()";
    metrics.start(40, 2560);
    dm::StepStats step = example_step();
    step.step = 41;
    metrics.record_step(step);
    metrics.finish(dm::JobState::kFinished);
  }
  const auto requests = gateway.requests();
  ASSERT_EQ(requests.size(), 2u) << "start, finish; the destructor pushes nothing after finish";
  for (const auto& r : requests) {
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.path, "/metrics/job/difftrain/instance/test-host/rank/2/run/test-run");
  }
  const std::string l = "{" + labels_of(2) + "}";
  EXPECT_TRUE(has_line(requests[0].body, R"(difftrain_job_state{host="test-host",rank="2",run="test-run",state="running"} 1)"))
      << requests[0].body;
  EXPECT_TRUE(has_line(requests[0].body, "difftrain_step" + l + " 40")) << requests[0].body;
  EXPECT_TRUE(has_line(requests[1].body, R"(difftrain_job_state{host="test-host",rank="2",run="test-run",state="finished"} 1)"))
      << requests[1].body;
  EXPECT_TRUE(has_line(requests[1].body, R"(difftrain_job_state{host="test-host",rank="2",run="test-run",state="running"} 0)"));
  EXPECT_TRUE(has_line(requests[1].body, "difftrain_step" + l + " 41"));
  EXPECT_TRUE(has_line(requests[1].body, "difftrain_steps_total" + l + " 1"));
}

TEST(TrainingMetrics, LeftWhileRunningPushesFailed) {
  FakeGateway gateway;
  try {
    dm::TrainingMetrics metrics(options_for("127.0.0.1:0", 0, gateway.address()));
    metrics.start(0, 0);
    throw std::runtime_error("the training loop failed");
  } catch (const std::runtime_error&) {
  }
  const auto requests = gateway.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_TRUE(has_line(requests[1].body, R"(difftrain_job_state{host="test-host",rank="0",run="test-run",state="failed"} 1)"))
      << requests[1].body;
}

TEST(TrainingMetrics, RunNameThatIsNotAPathWordTravelsBase64) {
  FakeGateway gateway;
  dm::MetricsOptions o = options_for("", 0, gateway.address());
  o.run = "my run/1";
  dm::TrainingMetrics metrics(o);
  metrics.start(0, 0);
  metrics.finish(dm::JobState::kFinished);
  ASSERT_FALSE(gateway.requests().empty());
  // base64url("my run/1") = "bXkgcnVuLzE="
  EXPECT_EQ(gateway.requests()[0].path, "/metrics/job/difftrain/instance/test-host/rank/0/run@base64/bXkgcnVuLzE=");
}

TEST(TrainingMetrics, PushFailureIsNeverAnError) {
  // Nothing listening.
  {
    dm::TrainingMetrics metrics(options_for("", 0, "127.0.0.1:" + std::to_string(closed_port())));
    metrics.start(0, 0);
    metrics.finish(dm::JobState::kFinished);
  }
  // An error status.
  FakeGateway refusing(500);
  {
    dm::TrainingMetrics metrics(options_for("", 0, refusing.address()));
    metrics.start(0, 0);
    metrics.finish(dm::JobState::kFinished);
  }
  EXPECT_EQ(refusing.requests().size(), 2u);
  // A gateway that never answers costs at most the deadline per push.
  FakeGateway silent(200, /*silent=*/true);
  auto registry = std::make_shared<prometheus::Registry>();
  dm::Pushgateway push(silent.address(), {"r", "h", 0}, registry, "--pushgateway", std::chrono::milliseconds(300));
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(push.push());
  EXPECT_LT(seconds_since(start), 1.5);
}

TEST(TrainingMetrics, MalformedPushgatewayNamesTheKey) {
  for (const std::string address : {"127.0.0.1", "127.0.0.1:0", ":9091", "host:99999", "http://host:9091/x"}) {
    EXPECT_FALSE(dm::is_host_port(address)) << address;
    try {
      dm::TrainingMetrics metrics(options_for("", 0, address));
      FAIL() << address << " should be rejected";
    } catch (const std::invalid_argument& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("monitoring.pushgateway '" + address + "'"), std::string::npos) << what;
      EXPECT_NE(what.find("host:port"), std::string::npos) << what;
    }
  }
  EXPECT_TRUE(dm::is_host_port("127.0.0.1:9091"));
  EXPECT_TRUE(dm::is_host_port("pushgateway.example:9091"));
}

TEST(JobPush, PushesRunningProgressResultsAndFinalState) {
  FakeGateway gateway;
  {
    dm::JobPush job(gateway.address(), {"samples-1", "test-host", 0}, "--pushgateway", std::chrono::hours(1));
    ASSERT_EQ(gateway.requests().size(), 1u) << "running is pushed at once";
    job.progress(10, 40);  // within the interval of the first push: kept for the next one
    EXPECT_EQ(gateway.requests().size(), 1u);
    job.record_fid("ddim", 10, 3, 0, 41.5);
    job.progress(40, 40);
    job.finish(dm::JobState::kFinished);
  }
  const auto requests = gateway.requests();
  ASSERT_EQ(requests.size(), 3u);
  EXPECT_EQ(requests[0].path, "/metrics/job/difftrain/instance/test-host/rank/0/run/samples-1");
  const std::string l = R"({host="test-host",rank="0",run="samples-1"})";
  EXPECT_TRUE(has_line(requests[0].body, R"(difftrain_job_state{host="test-host",rank="0",run="samples-1",state="running"} 1)"))
      << requests[0].body;
  EXPECT_TRUE(has_line(requests[1].body, "difftrain_job_images_done" + l + " 10")) << requests[1].body;
  EXPECT_TRUE(has_line(requests[1].body,
                       R"(difftrain_sweep_fid{eta="0",guidance="3",host="test-host",rank="0",run="samples-1",sampler="ddim",steps="10"} 41.5)"))
      << requests[1].body;
  const std::string& last = requests[2].body;
  EXPECT_TRUE(has_line(last, "difftrain_job_images_done" + l + " 40")) << last;
  EXPECT_TRUE(has_line(last, "difftrain_job_images_total" + l + " 40")) << last;
  EXPECT_TRUE(has_line(last, R"(difftrain_job_state{host="test-host",rank="0",run="samples-1",state="finished"} 1)"))
      << last;
}

TEST(JobPush, ProgressIsPushedEveryInterval) {
  FakeGateway gateway;
  dm::JobPush job(gateway.address(), {"s", "h", 0}, "--pushgateway", std::chrono::milliseconds(0));
  job.progress(1, 3);
  job.progress(2, 3);
  EXPECT_EQ(gateway.requests().size(), 3u);
  job.finish(dm::JobState::kFinished);
}

TEST(JobPush, LeftWhileRunningPushesFailed) {
  FakeGateway gateway;
  { dm::JobPush job(gateway.address(), {"s", "h", 0}, "--pushgateway"); }
  const auto requests = gateway.requests();
  ASSERT_EQ(requests.size(), 2u);
  EXPECT_TRUE(has_line(requests[1].body, R"(difftrain_job_state{host="h",rank="0",run="s",state="failed"} 1)"))
      << requests[1].body;
}

TEST(TrainingMetrics, PortInUseNamesAddressAndConfigKey) {
  dm::TrainingMetrics first(options_for("127.0.0.1:0", 0));
  const std::string taken = first.bound_address();
  try {
    dm::TrainingMetrics second(options_for(taken, 1));
    FAIL() << "second exporter on " << taken << " should not start";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(taken), std::string::npos) << what;
    EXPECT_NE(what.find("monitoring.port="), std::string::npos) << what;
  }
}

TEST(TrainingMetrics, MetricsReplyIsPrometheusText) {
  dm::TrainingMetrics metrics(options_for("127.0.0.1:0", 0));
  metrics.record_step(example_step());
  // HTTP/1.1 as Prometheus sends it; the server still closes after one reply.
  const std::string reply = http_raw(port_of(metrics.bound_address()),
                                     "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Accept-Encoding: gzip\r\n\r\n");
  EXPECT_EQ(status_line(reply), "HTTP/1.1 200 OK") << reply;
  const std::string head = header_block(reply);
  EXPECT_NE(head.find("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), std::string::npos)
      << head;
  EXPECT_NE(head.find("\r\nConnection: close\r\n"), std::string::npos) << head;
  const std::string body = body_of(reply);
  EXPECT_NE(head.find("\r\nContent-Length: " + std::to_string(body.size()) + "\r\n"), std::string::npos)
      << head << "body bytes: " << body.size();
  EXPECT_TRUE(has_line(body, "difftrain_loss{" + labels_of(0) + "} 0.25")) << body;
  // A query string does not change the path.
  EXPECT_EQ(status_line(http_get(port_of(metrics.bound_address()), "/metrics?x=1")), "HTTP/1.1 200 OK");
}

TEST(TrainingMetrics, OtherPathIs404AndOtherMethodIs405) {
  dm::TrainingMetrics metrics(options_for("127.0.0.1:0", 0));
  const int port = port_of(metrics.bound_address());
  const std::string not_found = http_get(port, "/other");
  EXPECT_EQ(status_line(not_found), "HTTP/1.1 404 Not Found") << not_found;
  EXPECT_EQ(body_of(not_found).find("difftrain_"), std::string::npos) << not_found;
  EXPECT_EQ(status_line(http_get(port, "/")), "HTTP/1.1 404 Not Found");

  const std::string post = http_raw(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(status_line(post), "HTTP/1.1 405 Method Not Allowed") << post;
  EXPECT_NE(header_block(post).find("\r\nAllow: GET\r\n"), std::string::npos) << post;

  EXPECT_EQ(status_line(http_raw(port, "garbage\r\n\r\n")), "HTTP/1.1 400 Bad Request");
  // The server is still serving after all of that.
  EXPECT_EQ(status_line(http_get(port, "/metrics")), "HTTP/1.1 200 OK");
}

TEST(TrainingMetrics, SilentClientDoesNotBlockTheNextScrape) {
  dm::TrainingMetrics metrics(options_for("127.0.0.1:0", 0));
  const int port = port_of(metrics.bound_address());
  const int silent = connect_to(port);  // connects, never sends a byte, stays open
  const auto start = std::chrono::steady_clock::now();
  const std::string reply = http_get(port, "/metrics");
  const double waited = seconds_since(start);
  EXPECT_EQ(status_line(reply), "HTTP/1.1 200 OK") << reply;
  EXPECT_LT(waited, 4.0) << "the server should drop a silent client after its read timeout";
  // The silent client was closed by the server without a reply.
  char byte;
  EXPECT_EQ(::recv(silent, &byte, 1, 0), 0);
  ::close(silent);
}

TEST(TrainingMetrics, DestructorStopsPromptly) {
  auto start = std::chrono::steady_clock::now();
  { dm::TrainingMetrics metrics(options_for("127.0.0.1:0", 0)); }
  EXPECT_LT(seconds_since(start), 1.0);

  // Even with a client connected mid-request, stopping waits at most one read timeout.
  auto metrics = make_metrics("127.0.0.1:0", 0);
  const int silent = connect_to(port_of(metrics->bound_address()));
  ::send(silent, "GET /met", 8, MSG_NOSIGNAL);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  start = std::chrono::steady_clock::now();
  metrics.reset();
  EXPECT_LT(seconds_since(start), 2.0);
  ::close(silent);
}

TEST(TrainingMetrics, PortIsFreedOnDestruction) {
  std::string address;
  { dm::TrainingMetrics first(options_for("127.0.0.1:0", 0)); address = first.bound_address(); }
  dm::TrainingMetrics again(options_for(address, 0));  // SO_REUSEADDR: no TIME_WAIT trouble
  EXPECT_EQ(again.bound_address(), address);
}

TEST(TrainingMetrics, BadAddressNamesItAndTheConfigKey) {
  for (const std::string address : {"example.invalid:9400", "127.0.0.1:port", "127.0.0.1:70000"}) {
    try {
      dm::TrainingMetrics metrics(options_for(address, 0));
      FAIL() << address << " should be rejected";
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("cannot listen on " + address), std::string::npos) << what;
      EXPECT_NE(what.find("monitoring."), std::string::npos) << what;
    }
  }
}

TEST(GrafanaDashboard, ParsesAndUsesOnlyExportedMetrics) {
  auto metrics = make_metrics("127.0.0.1:0", 0);
  metrics->record_step(example_step());
  metrics->set_fid(10);
  std::set<std::string> exported = difftrain_names(scrape(*metrics));
  ASSERT_EQ(exported.size(), 18u);
  // What sample / eval sweep push.
  FakeGateway gateway;
  {
    dm::JobPush job(gateway.address(), {"s", "h", 0}, "--pushgateway");
    job.record_fid("ddim", 10, 3, 0, 40);
    job.finish(dm::JobState::kFinished);
  }
  for (const auto& r : gateway.requests())
    for (const auto& name : difftrain_names(r.body)) exported.insert(name);

  std::ifstream file(DIFFTRAIN_DASHBOARD_JSON);
  ASSERT_TRUE(file) << "cannot open the dashboard";
  const nlohmann::json dashboard = nlohmann::json::parse(file);
  EXPECT_GE(dashboard.at("schemaVersion").get<int>(), 36);

  // Every selector of a difftrain metric (or up) is filtered by the run and host variables.
  static const std::regex selector(R"((difftrain_[A-Za-z0-9_]*|\bup)\{([^}]*)\})");
  // An aggregation that adds series must keep runs apart.
  static const std::regex sum_without_run(R"(\bsum\b(?! by \([^)]*\brun\b))");
  int exprs = 0;
  std::set<std::string> used_everywhere;
  for (const auto& panel : dashboard.at("panels")) {
    if (panel.at("type") == "row") continue;
    for (const auto& target : panel.at("targets")) {
      const std::string expr = target.at("expr");
      const auto used = difftrain_names(expr);
      EXPECT_FALSE(used.empty()) << panel.at("title") << ": " << expr;
      for (const auto& name : used) EXPECT_TRUE(exported.count(name)) << name << " in " << expr;
      used_everywhere.insert(used.begin(), used.end());
      int selectors = 0;
      for (std::sregex_iterator it(expr.begin(), expr.end(), selector), end; it != end; ++it, ++selectors) {
        const std::string matchers = (*it)[2];
        if ((*it)[1] == "up") continue;  // up has no run label: it is joined on instance to a filtered difftrain series
        EXPECT_NE(matchers.find(R"(run=~"$run")"), std::string::npos) << expr;
        EXPECT_NE(matchers.find(R"(host=~"$host")"), std::string::npos) << expr;
      }
      EXPECT_EQ(selectors, static_cast<int>(std::count(expr.begin(), expr.end(), '{'))) << "a bare metric: " << expr;
      EXPECT_FALSE(std::regex_search(expr, sum_without_run)) << "sum across runs: " << expr;
      ++exprs;
    }
  }
  EXPECT_GE(exprs, 15);
  for (const char* name : {"difftrain_last_step_timestamp_seconds", "difftrain_job_state",
                           "difftrain_nonfinite_steps_total", "difftrain_rollbacks_total",
                           "difftrain_skipped_steps_total", "difftrain_process_start_time_seconds",
                           "difftrain_images_seen"})
    EXPECT_TRUE(used_everywhere.count(name)) << name << " is on no panel";
  // Template variables run, host and rank, from a metric every job exports.
  std::set<std::string> variables;
  for (const auto& variable : dashboard.at("templating").at("list")) {
    variables.insert(variable.at("name").get<std::string>());
    if (variable.at("type") != "query") continue;
    const std::string definition = variable.at("definition");
    EXPECT_EQ(definition.rfind("label_values(", 0), 0u) << definition;
    for (const auto& name : difftrain_names(definition)) EXPECT_TRUE(exported.count(name)) << name;
  }
  for (const char* name : {"run", "host", "rank"}) EXPECT_TRUE(variables.count(name)) << name;
}

TEST(Progress, FormatRateProgress) {
  EXPECT_EQ(dm::format_rate_progress("sampling w=3", 640, 2000, 16), "sampling w=3: 640/2000 images (32.0%)  40.0 img/s  ETA 34s");
  // Fractions of an image (a 1000-step batch part way through) count toward the rate.
  EXPECT_EQ(dm::format_rate_progress("FID ddpm", 12.5, 100, 5), "FID ddpm: 12/100 images (12.5%)  2.5 img/s  ETA 35s");
  EXPECT_EQ(dm::format_rate_progress("make-shards", 0, 10, 0, "files"), "make-shards: 0/10 files (0.0%)  0.0 files/s  ETA --");
}

TEST(Progress, FormatDuration) {
  EXPECT_EQ(dm::format_duration(0), "0s");
  EXPECT_EQ(dm::format_duration(12.3), "12s");
  EXPECT_EQ(dm::format_duration(59.6), "1m00s");
  EXPECT_EQ(dm::format_duration(252), "4m12s");
  EXPECT_EQ(dm::format_duration(3720), "1h02m");
  EXPECT_EQ(dm::format_duration(100 * 3600), "100h00m");
  EXPECT_EQ(dm::format_duration(-1), "--");
  EXPECT_EQ(dm::format_duration(1.0 / 0.0), "--");
}

TEST(Progress, FormatProgressLine) {
  EXPECT_EQ(dm::format_progress(120, 2000, 0.0812, 312.4, 252.0 / 1880),
            "step  120/2000 ( 6.0%)  loss 0.0812  312.4 img/s  ETA 4m12s");
  EXPECT_EQ(dm::format_progress(2000, 2000, 0.05, 300, 0.1),
            "step 2000/2000 (100.0%)  loss 0.0500  300.0 img/s  ETA 0s");
  EXPECT_EQ(dm::format_progress(0, 2000, 1.0, 0, 0),
            "step    0/2000 ( 0.0%)  loss 1.0000  0.0 img/s  ETA --");
}
