// MetricsHttpServer: a minimal HTTP/1.1 server for one Prometheus registry.
// Answers GET /metrics with the registry in the Prometheus text format; see
// metrics_http_server.cpp for why this replaces prometheus::Exposer (civetweb).
//
// Threading: one server thread, started by the constructor and stopped and
// joined by the destructor. It only reads the registry (Collect()), which
// prometheus-cpp makes thread-safe, so callers may update metrics freely.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace difftrain::monitoring {

class MetricsHttpServer {
 public:
  // bind_address is "host:port" with a numeric IPv4 host ("127.0.0.1",
  // "0.0.0.0"; "localhost" means 127.0.0.1; a bare "port" means 0.0.0.0).
  // Port 0 picks a free port. Throws std::runtime_error naming the address and
  // the reason when it cannot listen or cannot start its thread.
  MetricsHttpServer(const std::string& bind_address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();  // stops within ~200 ms (+ one read timeout mid-request); never throws

  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // "host:port" actually listened on (the real port when 0 was asked for).
  std::string bound_address() const { return bound_address_; }

 private:
  void serve();
  void handle_connection(int fd);

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  std::string bound_address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace difftrain::monitoring
