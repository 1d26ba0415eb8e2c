// See key_options.h.
#include "key_options.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tensorizer/crypto.h"

namespace tensorizer::cli {
namespace {

std::optional<CryptKey> ReadKeyFile(const std::string& path, std::optional<KeyOptionError>* error) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    *error = KeyOptionError{false, "reading key file " + path + ": " + std::strerror(errno)};
    return std::nullopt;
  }
  CryptKey key;
  uint8_t extra;
  size_t got = std::fread(key.data(), 1, key.size(), f);
  bool longer = got == key.size() && std::fread(&extra, 1, 1, f) == 1;
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) {
    *error = KeyOptionError{false, "reading key file " + path + ": read error"};
    return std::nullopt;
  }
  if (got != key.size() || longer) {
    *error = KeyOptionError{false, "key file " + path + " must hold exactly " +
                                       std::to_string(kKeyBytes) + " raw bytes"};
    return std::nullopt;
  }
  return key;
}

std::optional<std::string> PassphraseFromEnv(const std::string& var,
                                             std::optional<KeyOptionError>* error) {
  const char* value = std::getenv(var.c_str());
  if (value == nullptr) {
    *error = KeyOptionError{false, "environment variable " + var + " is not set"};
    return std::nullopt;
  }
  if (*value == '\0') {
    *error = KeyOptionError{false, "environment variable " + var + " is empty"};
    return std::nullopt;
  }
  return std::string(value);
}

struct Preset {
  const char* name;
  uint64_t ops;
  uint64_t mem;
};
constexpr Preset kPresets[] = {
    {"min", static_cast<uint64_t>(OpsLimit::kMin), static_cast<uint64_t>(MemLimit::kMin)},
    {"interactive", static_cast<uint64_t>(OpsLimit::kInteractive),
     static_cast<uint64_t>(MemLimit::kInteractive)},
    {"moderate", static_cast<uint64_t>(OpsLimit::kModerate),
     static_cast<uint64_t>(MemLimit::kModerate)},
    {"sensitive", static_cast<uint64_t>(OpsLimit::kSensitive),
     static_cast<uint64_t>(MemLimit::kSensitive)},
};

// A preset name or a number within libsodium's range.
std::optional<uint64_t> ParseLimit(const std::string& text, bool memory, uint64_t min,
                                   uint64_t max) {
  for (const Preset& p : kPresets) {
    if (text == p.name) return memory ? p.mem : p.ops;
  }
  return ParseCount(text, min, max);
}

}  // namespace

std::optional<DecryptionOptions> DecryptionFromArgs(const ParsedArgs& args,
                                                    std::optional<KeyOptionError>* error) {
  auto key_file = args.value("--key-file");
  auto env = args.value("--passphrase-env");
  if (key_file && env) {
    *error = KeyOptionError{true, "give --key-file or --passphrase-env, not both"};
    return std::nullopt;
  }
  if (!key_file && !env) return std::nullopt;
  DecryptionOptions d;
  if (key_file) {
    d.key = ReadKeyFile(*key_file, error);
    if (!d.key) return std::nullopt;
  } else {
    d.passphrase = PassphraseFromEnv(*env, error);
    if (!d.passphrase) return std::nullopt;
  }
  return d;
}

std::optional<WriterEncryption> EncryptionFromArgs(const ParsedArgs& args,
                                                   std::optional<KeyOptionError>* error) {
  auto key_file = args.value("--encrypt-key-file");
  auto env = args.value("--encrypt-passphrase-env");
  auto ops = args.value("--ops");
  auto mem = args.value("--mem");
  if (key_file && env) {
    *error = KeyOptionError{true, "give --encrypt-key-file or --encrypt-passphrase-env, not both"};
    return std::nullopt;
  }
  if ((ops || mem) && !env) {
    *error = KeyOptionError{true, "--ops and --mem need --encrypt-passphrase-env"};
    return std::nullopt;
  }
  if (!key_file && !env) return std::nullopt;
  WriterEncryption e;
  if (key_file) {
    auto key = ReadKeyFile(*key_file, error);
    if (!key) return std::nullopt;
    e.key = *key;
    return e;
  }
  PwhashParams params;  // moderate/moderate, Argon2id, as tensorizer defaults
  if (ops) {
    auto v = ParseLimit(*ops, false, static_cast<uint64_t>(OpsLimit::kMin), kOpsLimitMax);
    if (!v) {
      *error = KeyOptionError{true,
                              "--ops must be min, interactive, moderate, sensitive or a "
                              "number from 1 to " +
                                  std::to_string(kOpsLimitMax)};
      return std::nullopt;
    }
    params.opslimit = *v;
  }
  if (mem) {
    auto v = ParseLimit(*mem, true, static_cast<uint64_t>(MemLimit::kMin), kMemLimitMax);
    if (!v) {
      *error = KeyOptionError{true,
                              "--mem must be min, interactive, moderate, sensitive or a "
                              "number of bytes from 8192 to " +
                                  std::to_string(kMemLimitMax)};
      return std::nullopt;
    }
    params.memlimit = *v;
  }
  auto passphrase = PassphraseFromEnv(*env, error);
  if (!passphrase) return std::nullopt;
  auto salt = RandomSalt();
  if (!salt.ok()) {
    *error = KeyOptionError{false, salt.status().message()};
    return std::nullopt;
  }
  params.salt = std::move(salt).value();
  auto key = DeriveKey(*passphrase, params);
  if (!key.ok()) {
    *error = KeyOptionError{false, "deriving the key: " + key.status().message()};
    return std::nullopt;
  }
  e.key = *key;
  e.key_derivation = KeyDerivationChunk{params};
  return e;
}

int KeyOptionFailure(const Command& command, const KeyOptionError& error) {
  return error.usage ? UsageError(command, error.message) : Failure(command, error.message);
}

}  // namespace tensorizer::cli
