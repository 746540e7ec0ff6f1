// Why this exists: prometheus-cpp's Exposer serves /metrics through civetweb,
// and Debian's civetweb creates its threads with a fixed 100 KB stack
// (CIVETWEB_THREAD_STACK_SIZE=102400). glibc requires a thread's stack to hold
// the process's static TLS plus guard and a minimum; the trainer links LibTorch
// and OpenBLAS (libopenblas alone has a ~61 KB static TLS block), so civetweb's
// pthread_create fails with EINVAL and the Exposer throws "Cannot create
// threads: error 2". This server uses a std::thread with the default stack size
// (glibc takes it from RLIMIT_STACK, typically 8 MiB, far above any static TLS),
// so it starts in any process. prometheus-cpp still provides the registry and
// the text format.
//
// Threading model: exactly one server thread. It poll()s the listening socket
// with a 200 ms timeout so the destructor's stop flag is seen promptly, accepts
// one connection at a time, reads the request head with a 1 s receive timeout
// (and a 2 s overall deadline, 8 KiB cap), answers, and closes. Connections are
// never kept alive. A scrape is tiny, so serialising clients is fine; a client
// that connects and sends nothing delays the next one by at most the deadline.
// The thread only reads the registry (Collect()), which prometheus-cpp makes
// thread-safe, so the training loop updates metrics without any lock here.
#include "monitoring/metrics_http_server.h"

#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace difftrain::monitoring {
namespace {

constexpr int kPollMillis = 200;                                // stop-flag latency
constexpr int kReadTimeoutSeconds = 1;                          // per recv()
constexpr auto kRequestDeadline = std::chrono::seconds(2);      // whole request head
constexpr int kSendTimeoutSeconds = 2;                          // per send()
constexpr std::size_t kMaxRequestBytes = 8 * 1024;              // request line + headers
constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

std::string error_text(int err) { return std::system_category().message(err); }

[[noreturn]] void fail(const std::string& address, const std::string& reason, const std::string& hint) {
  throw std::runtime_error("monitoring: cannot listen on " + address + ": " + reason + hint);
}

const char* hint_for(int err) {
  switch (err) {
    case EADDRINUSE:
    case EACCES:
      return " (another run or rank on this port? pick another base port with monitoring.port=<port>)";
    case EADDRNOTAVAIL:
      return " (is monitoring.host=<host> an address of this machine? 127.0.0.1 or 0.0.0.0 always are)";
    default:
      return "";
  }
}

struct ParsedAddress {
  in_addr host{};
  uint16_t port = 0;
};

ParsedAddress parse_address(const std::string& address) {
  const auto colon = address.rfind(':');
  std::string host = colon == std::string::npos ? std::string() : address.substr(0, colon);
  const std::string port = colon == std::string::npos ? address : address.substr(colon + 1);
  if (host.empty()) host = "0.0.0.0";
  if (host == "localhost") host = "127.0.0.1";

  ParsedAddress parsed;
  if (::inet_pton(AF_INET, host.c_str(), &parsed.host) != 1)
    fail(address, "host '" + host + "' is not a numeric IPv4 address",
         " (set monitoring.host to e.g. 127.0.0.1 or 0.0.0.0)");
  bool digits = !port.empty() && port.size() <= 5;
  for (const char c : port) digits = digits && c >= '0' && c <= '9';
  const long value = digits ? std::stol(port) : -1;
  if (value < 0 || value > 65535)
    fail(address, "port '" + port + "' is not a number in 0..65535", " (set monitoring.port=<port>)");
  parsed.port = static_cast<uint16_t>(value);
  return parsed;
}

void close_quietly(int fd) {
  if (fd >= 0) ::close(fd);
}

// Sends all of `data`; gives up on error or send timeout (the client is gone or stuck).
void send_all(int fd, const std::string& data) {
  std::size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else {
      return;
    }
  }
}

std::string response(int status, const char* reason, const char* content_type, const std::string& body,
                     const char* extra_headers = "") {
  std::string head = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
  head += std::string("Content-Type: ") + content_type + "\r\n";
  head += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  head += extra_headers;
  head += "Connection: close\r\n\r\n";
  return head + body;
}

std::string plain(int status, const char* reason, const char* extra_headers = "") {
  return response(status, reason, "text/plain; charset=utf-8", std::string(reason) + "\n", extra_headers);
}

}  // namespace

MetricsHttpServer::MetricsHttpServer(const std::string& bind_address,
                                     std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)) {
  const ParsedAddress parsed = parse_address(bind_address);

  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) fail(bind_address, "socket(): " + error_text(errno), "");
  const int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);

  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(parsed.port);
  addr.sin_addr = parsed.host;
  if (::bind(listen_fd_, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 16) != 0) {
    const int err = errno;
    close_quietly(listen_fd_);
    listen_fd_ = -1;
    fail(bind_address, error_text(err), hint_for(err));
  }

  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  char host[INET_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET, &bound.sin_addr, host, sizeof host);
  bound_address_ = std::string(host) + ":" + std::to_string(ntohs(bound.sin_port));

  try {
    thread_ = std::thread([this] { serve(); });
  } catch (const std::system_error& e) {
    close_quietly(listen_fd_);
    listen_fd_ = -1;
    throw std::runtime_error("monitoring: cannot start the metrics server thread for " + bind_address + ": " +
                             e.what());
  }
}

MetricsHttpServer::~MetricsHttpServer() {
  stop_.store(true);
  try {
    if (thread_.joinable()) thread_.join();
  } catch (...) {
    // join() only throws for a non-joinable or self-joining thread; nothing to do here.
  }
  close_quietly(listen_fd_);
}

void MetricsHttpServer::serve() {
  while (!stop_.load()) {
    pollfd pfd{listen_fd_, POLLIN, 0};
    const int ready = ::poll(&pfd, 1, kPollMillis);
    if (ready <= 0) continue;  // timeout, or EINTR: re-check the stop flag
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;  // EAGAIN (client gave up), ECONNABORTED, EMFILE...: try again later
    try {
      handle_connection(fd);
    } catch (...) {
      // A failed scrape (e.g. bad_alloc) must not take the trainer down.
    }
    ::close(fd);
  }
}

void MetricsHttpServer::handle_connection(int fd) {
  timeval rcv{kReadTimeoutSeconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &rcv, sizeof rcv);
  timeval snd{kSendTimeoutSeconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &snd, sizeof snd);

  // Read the request head (request line + headers) so that closing afterwards
  // does not reset the connection over unread bytes.
  const auto deadline = std::chrono::steady_clock::now() + kRequestDeadline;
  std::string request;
  char buf[1024];
  while (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
    if (request.size() >= kMaxRequestBytes) {
      send_all(fd, plain(431, "Request Header Fields Too Large"));
      return;
    }
    if (stop_.load() || std::chrono::steady_clock::now() >= deadline) return;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      request.append(buf, static_cast<std::size_t>(n));
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n == 0 && request.find('\n') != std::string::npos) {
      break;  // client half-closed after the request line; answer it anyway
    } else {
      return;  // read timeout (client sent nothing), reset, or EOF before a request line
    }
  }

  // Request line: METHOD SP request-target SP HTTP-version
  const std::string line = request.substr(0, request.find_first_of("\r\n"));
  const auto sp1 = line.find(' ');
  const auto sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
  if (sp1 == std::string::npos || sp2 == std::string::npos || line.compare(sp2 + 1, 5, "HTTP/") != 0) {
    send_all(fd, plain(400, "Bad Request"));
    return;
  }
  const std::string method = line.substr(0, sp1);
  std::string target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  target = target.substr(0, target.find('?'));

  if (method != "GET") {
    send_all(fd, plain(405, "Method Not Allowed", "Allow: GET\r\n"));
  } else if (target != "/metrics") {
    send_all(fd, plain(404, "Not Found"));
  } else {
    const std::string body = prometheus::TextSerializer().Serialize(registry_->Collect());
    send_all(fd, response(200, "OK", kMetricsContentType, body));
  }
}

}  // namespace difftrain::monitoring
