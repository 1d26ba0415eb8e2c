// `tensorizer cp SRC DST`: copy a file from any readable URI to a local path
// or s3:// through the library's CopyFile (convert.h), with a progress bar
// on stderr when stderr is a terminal.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "command.h"
#include "remote_options.h"
#include "tensor_display.h"
#include "tensorizer/convert.h"

namespace tensorizer::cli {
namespace {

const std::string kHelp =
    std::string(
        "usage: tensorizer cp [REMOTE OPTIONS] SRC DST\n"
        "\n"
        "Copies SRC to DST in chunks read and written in parallel. SRC is a path or\n"
        "a URI: file://, http(s)://, s3://bucket/key or redis://host/prefix. DST is\n"
        "a file, an existing directory to copy into, s3://bucket/key, or an s3://\n"
        "URI ending in / to copy into under SRC's name. A local DST is written under\n"
        "a temporary name and renamed at the end, an s3:// DST is a multipart upload\n"
        "completed at the end, so a failed copy leaves no DST behind. When stderr is\n"
        "a terminal, a progress bar is shown there.\n"
        "\n"
        "options:\n"
        "  -h, --help  show this help\n"
        "\n") +
    kRemoteOptionsHelp +
    "\n"
    "exit status: 0 copied, 1 SRC cannot be read or DST cannot be written,\n"
    "2 usage error\n";

std::string Size(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

// "[#########-----------]  45%  1.2 GiB / 2.7 GiB  850.3 MiB/s", redrawn in
// place with a carriage return.
class ProgressBar {
 public:
  ProgressBar() : start_(std::chrono::steady_clock::now()) {}
  void Draw(uint64_t done, uint64_t total) {
    constexpr int kWidth = 30;
    double frac = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
    int filled = static_cast<int>(frac * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '-');
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::string rate = secs > 0 ? Size(static_cast<double>(done) / secs) + "/s" : "";
    std::fprintf(stderr, "\r[%s] %3d%%  %s / %s  %s\033[K", bar.c_str(),
                 static_cast<int>(frac * 100), Size(static_cast<double>(done)).c_str(),
                 Size(static_cast<double>(total)).c_str(), rate.c_str());
    std::fflush(stderr);
    drawn_ = true;
  }
  void Finish() {
    if (drawn_) std::fputc('\n', stderr);
  }

 private:
  std::chrono::steady_clock::time_point start_;
  bool drawn_ = false;
};

int RunCp(const std::vector<std::string>& args) {
  const Command& self = kCpCommand;
  int exit_code = kExitOk;
  OptionSpec spec;
  AddRemoteOptions(&spec);
  auto parsed = ParseCommand(self, args, spec, {"SRC", "DST"}, &exit_code);
  if (!parsed) return exit_code;
  std::string usage_error;
  auto remote = RemoteOptionsFromArgs(*parsed, &usage_error);
  if (!remote) return UsageError(self, usage_error);
  CopyOptions options;
  options.source = remote->source;
  options.sink = remote->sink;
  ProgressBar bar;
  if (::isatty(STDERR_FILENO)) {
    options.progress = [&bar](uint64_t done, uint64_t total) { bar.Draw(done, total); };
  }
  auto copied = CopyFile(parsed->positional[0], parsed->positional[1], options);
  bar.Finish();
  if (!copied.ok()) return Failure(self, copied.status().message());
  return kExitOk;
}

}  // namespace

const Command kCpCommand = {"cp", "copy a file between local paths and URIs (s3://, http(s)://)",
                            kHelp.c_str(), RunCp};

}  // namespace tensorizer::cli
