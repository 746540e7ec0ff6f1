#include "monitoring/pushgateway.h"

#include <prometheus/gateway.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <curl/curl.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <future>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace difftrain::monitoring {
namespace {

bool url_safe(const std::string& value) {
  if (value.empty()) return false;
  for (const unsigned char c : value)
    if (!(std::isalnum(c) || c == '.' || c == '_' || c == '-')) return false;
  return true;
}

// RFC 4648 base64url, what Pushgateway decodes from a "<label>@base64" path segment.
std::string base64url(const std::string& in) {
  static const char* const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int shift : {18, 12, 6, 0}) out += alphabet[(n >> shift) & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t n = uint8_t(in[i]) << 16;
    out += alphabet[(n >> 18) & 63];
    out += alphabet[(n >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t n = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    for (int shift : {18, 12, 6}) out += alphabet[(n >> shift) & 63];
    out += "=";
  }
  return out.empty() ? "=" : out;  // Pushgateway reads a lone "=" as the empty value
}

// prometheus-cpp writes grouping labels into the URL path unescaped: any value
// that is not a plain word travels base64url-encoded.
void add_grouping_label(std::map<std::string, std::string>& labels, const std::string& name,
                        const std::string& value) {
  if (url_safe(value)) labels[name] = value;
  else labels[name + "@base64"] = base64url(value);
}

constexpr int kPushThrew = std::numeric_limits<int>::min();

std::string describe_status(int status) {
  if (status == kPushThrew) return "the push library threw";
  if (status < 0) return curl_easy_strerror(static_cast<CURLcode>(-status));
  return "HTTP status " + std::to_string(status);
}

}  // namespace

const char* job_state_name(JobState state) {
  switch (state) {
    case JobState::kRunning: return "running";
    case JobState::kFinished: return "finished";
    case JobState::kStopped: return "stopped";
    case JobState::kFailed: return "failed";
  }
  return "unknown";
}

std::string local_hostname() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "unknown";
  return name;
}

double process_start_time_seconds() {
  // Field 22 of /proc/self/stat is the start in clock ticks since boot; /proc/stat's btime is the boot time.
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  const auto after_name = line.rfind(')');  // the command name may hold spaces
  std::istringstream fields(after_name == std::string::npos ? std::string() : line.substr(after_name + 2));
  std::string field;
  unsigned long long start_ticks = 0;
  for (int index = 3; index <= 22 && fields >> field; ++index)
    if (index == 22) start_ticks = std::stoull(field);
  std::ifstream boot("/proc/stat");
  unsigned long long btime = 0;
  for (std::string key; boot >> key;)
    if (key == "btime" && boot >> btime) break;
  const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
  if (start_ticks == 0 || btime == 0 || ticks_per_second <= 0) {
    // No /proc: the first call is close enough to the start for telling restarts apart.
    static const double first_call =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    return first_call;
  }
  return static_cast<double>(btime) + static_cast<double>(start_ticks) / static_cast<double>(ticks_per_second);
}

std::string run_name_of_dir(const std::string& dir) {
  std::error_code ec;
  auto path = std::filesystem::absolute(dir, ec).lexically_normal();
  if (ec) path = std::filesystem::path(dir).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  const std::string name = path.filename().string();
  return name.empty() ? dir : name;
}

bool is_host_port(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  const std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  if (host.find_first_of("/ \t") != std::string::npos) return false;
  if (port.empty() || port.size() > 5) return false;
  for (const char c : port)
    if (c < '0' || c > '9') return false;
  const long value = std::stol(port);
  return value >= 1 && value <= 65535;
}

Pushgateway::Pushgateway(const std::string& address, const PushIdentity& identity,
                         std::shared_ptr<prometheus::Registry> registry, const std::string& setting,
                         std::chrono::milliseconds deadline)
    : address_(address), setting_(setting), registry_(std::move(registry)), deadline_(deadline) {
  if (!is_host_port(address))
    throw std::invalid_argument(setting + " '" + address + "': expected host:port of a Prometheus Pushgateway, "
                                "e.g. 127.0.0.1:9091");
  const auto colon = address.rfind(':');
  std::map<std::string, std::string> grouping;
  add_grouping_label(grouping, "run", identity.run);
  add_grouping_label(grouping, "instance", identity.host);
  add_grouping_label(grouping, "rank", std::to_string(identity.rank));
  gateway_ = std::make_shared<prometheus::Gateway>("http://" + address.substr(0, colon), address.substr(colon + 1),
                                                   "difftrain", grouping);
  gateway_->RegisterCollectable(registry_);
}

Pushgateway::~Pushgateway() = default;

bool Pushgateway::push() {
  // The request runs on its own thread so that a gateway that never answers
  // costs at most the deadline; the thread owns what it uses.
  auto result = std::make_shared<std::promise<int>>();
  auto answered = result->get_future();
  try {
    std::thread([gateway = gateway_, registry = registry_, result] {
      int status = kPushThrew;
      try {
        status = gateway->Push();  // POST: replaces this group's metrics of the same names
      } catch (...) {
      }
      result->set_value(status);
    }).detach();
  } catch (const std::system_error&) {
    result->set_value(kPushThrew);
  }
  std::string failure;
  if (answered.wait_for(deadline_) != std::future_status::ready) {
    char text[64];
    std::snprintf(text, sizeof text, "no answer within %.1f s", static_cast<double>(deadline_.count()) / 1000.0);
    failure = text;
  } else {
    const int status = answered.get();
    if (status >= 200 && status < 300) return true;
    failure = describe_status(status);
  }
  const std::string message = "monitoring: push to the Pushgateway at " + address_ + " (" + setting_ +
                              ") failed: " + failure + "; the job goes on without it";
  if (warned_) {
    spdlog::debug("{}", message);
  } else {
    spdlog::warn("{} (further push failures are not repeated)", message);
    warned_ = true;
  }
  return false;
}

}  // namespace difftrain::monitoring
