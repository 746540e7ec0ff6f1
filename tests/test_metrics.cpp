// TrainingMetrics is tested the way Prometheus sees it: a plain HTTP GET of
// /metrics. The dashboard is checked against the names a real scrape exports.
#include "monitoring/metrics.h"
#include "monitoring/progress.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <regex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>

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

}  // namespace

TEST(TrainingMetrics, ScrapeShowsRecordedStep) {
  dm::TrainingMetrics metrics("127.0.0.1:0", 3);
  EXPECT_NE(port_of(metrics.bound_address()), 0);
  EXPECT_EQ(metrics.bound_address().rfind("127.0.0.1:", 0), 0u);

  metrics.record_step(example_step());
  dm::StepStats skipped = example_step();
  skipped.skipped = true;
  metrics.record_step(skipped);

  const std::string text = scrape(metrics);
  for (const char* line : {
           R"(difftrain_loss{rank="3"} 0.25)",
           R"(difftrain_learning_rate{rank="3"} 0.0001)",
           R"(difftrain_step_seconds{rank="3"} 0.5)",
           R"(difftrain_comm_wait_seconds{rank="3"} 0.125)",
           R"(difftrain_images_per_second{rank="3"} 128)",
           R"(difftrain_grad_norm{rank="3"} 1.5)",
           R"(difftrain_loss_scale{rank="3"} 65536)",
           R"(difftrain_step{rank="3"} 2)",
           R"(difftrain_steps_total{rank="3"} 2)",
           R"(difftrain_images_total{rank="3"} 128)",
           R"(difftrain_skipped_steps_total{rank="3"} 1)",
           "# TYPE difftrain_steps_total counter",
           "# TYPE difftrain_loss gauge",
       }) {
    EXPECT_TRUE(has_line(text, line)) << "missing: " << line << "\n" << text;
  }
}

TEST(TrainingMetrics, SetStepPrimesCountersOnResume) {
  dm::TrainingMetrics metrics("127.0.0.1:0", 0);
  metrics.set_step(1000);
  metrics.record_step(example_step());
  const std::string text = scrape(metrics);
  EXPECT_TRUE(has_line(text, R"(difftrain_step{rank="0"} 1001)")) << text;
  EXPECT_TRUE(has_line(text, R"(difftrain_steps_total{rank="0"} 1001)")) << text;
}

TEST(TrainingMetrics, PortInUseNamesAddressAndConfigKey) {
  dm::TrainingMetrics first("127.0.0.1:0", 0);
  const std::string taken = first.bound_address();
  try {
    dm::TrainingMetrics second(taken, 1);
    FAIL() << "second exporter on " << taken << " should not start";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(taken), std::string::npos) << what;
    EXPECT_NE(what.find("monitoring.port="), std::string::npos) << what;
  }
}

TEST(TrainingMetrics, MetricsReplyIsPrometheusText) {
  dm::TrainingMetrics metrics("127.0.0.1:0", 0);
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
  EXPECT_TRUE(has_line(body, R"(difftrain_loss{rank="0"} 0.25)")) << body;
  // A query string does not change the path.
  EXPECT_EQ(status_line(http_get(port_of(metrics.bound_address()), "/metrics?x=1")), "HTTP/1.1 200 OK");
}

TEST(TrainingMetrics, OtherPathIs404AndOtherMethodIs405) {
  dm::TrainingMetrics metrics("127.0.0.1:0", 0);
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
  dm::TrainingMetrics metrics("127.0.0.1:0", 0);
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
  { dm::TrainingMetrics metrics("127.0.0.1:0", 0); }
  EXPECT_LT(seconds_since(start), 1.0);

  // Even with a client connected mid-request, stopping waits at most one read timeout.
  auto metrics = std::make_unique<dm::TrainingMetrics>("127.0.0.1:0", 0);
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
  { dm::TrainingMetrics first("127.0.0.1:0", 0); address = first.bound_address(); }
  dm::TrainingMetrics again(address, 0);  // SO_REUSEADDR: no TIME_WAIT trouble
  EXPECT_EQ(again.bound_address(), address);
}

TEST(TrainingMetrics, BadAddressNamesItAndTheConfigKey) {
  for (const std::string address : {"example.invalid:9400", "127.0.0.1:port", "127.0.0.1:70000"}) {
    try {
      dm::TrainingMetrics metrics(address, 0);
      FAIL() << address << " should be rejected";
    } catch (const std::runtime_error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("cannot listen on " + address), std::string::npos) << what;
      EXPECT_NE(what.find("monitoring."), std::string::npos) << what;
    }
  }
}

TEST(GrafanaDashboard, ParsesAndUsesOnlyExportedMetrics) {
  dm::TrainingMetrics metrics("127.0.0.1:0", 0);
  metrics.record_step(example_step());
  const std::set<std::string> exported = difftrain_names(scrape(metrics));
  ASSERT_EQ(exported.size(), 12u);

  std::ifstream file(DIFFTRAIN_DASHBOARD_JSON);
  ASSERT_TRUE(file) << "cannot open the dashboard";
  const nlohmann::json dashboard = nlohmann::json::parse(file);
  EXPECT_GE(dashboard.at("schemaVersion").get<int>(), 36);

  int exprs = 0;
  for (const auto& panel : dashboard.at("panels")) {
    for (const auto& target : panel.at("targets")) {
      const std::string expr = target.at("expr");
      const auto used = difftrain_names(expr);
      EXPECT_FALSE(used.empty()) << panel.at("title") << ": " << expr;
      for (const auto& name : used) EXPECT_TRUE(exported.count(name)) << name << " in " << expr;
      ++exprs;
    }
  }
  EXPECT_GE(exprs, 7);
  // The rank variable's query must also name a real metric.
  for (const auto& variable : dashboard.at("templating").at("list")) {
    if (variable.at("name") != "rank") continue;
    for (const auto& name : difftrain_names(variable.at("definition").get<std::string>()))
      EXPECT_TRUE(exported.count(name)) << name;
  }
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
