#include "runtime/session.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include "format/mapped_file.h"

namespace kvant {

namespace {

// Session file, little-endian:
//   u8[8] magic "KVSESS\0\n"; u32 version (2: q4 key regions hold offset rows,
//   kernels/layout.h); u32 kv type; u32 n_layers, n_kv_heads, head_dim, page_tokens;
//   u64 model header checksum; u64 n_tokens; i32 tokens[n];
//   u64 n_app; u8 app_data[n_app] (the application's, e.g. kvant-chat's conversation);
//   u64 n_pages; n_pages × page_bytes of KV pages; u64 XXH3-64 of all bytes before it.
constexpr char kMagic[8] = {'K', 'V', 'S', 'E', 'S', 'S', 0, '\n'};
constexpr uint32_t kVersion = 2;
constexpr uint64_t kHeaderBytes = 8 + 4 * 6 + 8 + 8;

template <class T>
void put(std::vector<uint8_t>& out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + sizeof(T));
}
template <class T>
T get(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

Status bad(const std::string& msg) { return Status(ErrorCode::format, "session file: " + msg); }

}  // namespace

Result<SessionFileInfo> parse_session_file(std::span<const uint8_t> b, const KvLayout& layout, uint64_t model_checksum,
                                           int64_t n_ctx, int32_t vocab_size) {
  if (b.size() < kHeaderBytes + 16) return bad(fmt::format("{} bytes is too short", b.size()));
  if (std::memcmp(b.data(), kMagic, 8) != 0) return bad("bad magic: not a kvant session file");
  const uint8_t* p = b.data() + 8;
  const auto version = get<uint32_t>(p);
  if (version != kVersion) return bad(fmt::format("version {} is not supported (this reader: {})", version, kVersion));
  if (XXH3_64bits(b.data(), b.size() - 8) != get<uint64_t>(b.data() + b.size() - 8))
    return Status(ErrorCode::checksum, "session file: checksum mismatch (the file is corrupted)");
  const auto kv = get<uint32_t>(p + 4), layers = get<uint32_t>(p + 8), heads = get<uint32_t>(p + 12),
             hd = get<uint32_t>(p + 16), page_tokens = get<uint32_t>(p + 20);
  if (kv != static_cast<uint32_t>(layout.type))
    return Status(ErrorCode::invalid_argument,
                  fmt::format("session file holds a KV cache of another type ({}) than this session's ({})", kv,
                              kv_type_name(layout.type)));
  if (layers != layout.n_layers || heads != layout.n_kv_heads || hd != layout.head_dim ||
      page_tokens != layout.page_tokens)
    return Status(ErrorCode::invalid_argument, "session file was saved for a model of another shape");
  if (get<uint64_t>(p + 24) != model_checksum)
    return Status(ErrorCode::invalid_argument, "session file was saved with another model file");
  const auto n_tokens = get<uint64_t>(p + 32);
  if (n_tokens > static_cast<uint64_t>(n_ctx))
    return Status(ErrorCode::context_full,
                  fmt::format("session file holds {} tokens, more than this session's context of {}", n_tokens, n_ctx));
  SessionFileInfo info;
  uint64_t off = kHeaderBytes;
  if (n_tokens > (b.size() - off) / 4) return bad("token list extends past the end of the file");
  info.tokens.resize(n_tokens);
  if (n_tokens > 0) std::memcpy(info.tokens.data(), b.data() + off, n_tokens * 4);  // data() may be null when empty
  for (int32_t t : info.tokens)
    if (t < 0 || t >= vocab_size) return bad(fmt::format("token id {} is outside the vocabulary", t));
  off += n_tokens * 4;
  if (off + 8 > b.size()) return bad("missing application data size");
  info.app_data_size = get<uint64_t>(b.data() + off);
  off += 8;
  if (info.app_data_size > b.size() - off) return bad("application data extends past the end of the file");
  info.app_data_offset = off;
  off += info.app_data_size;
  if (off + 8 > b.size()) return bad("missing page count");
  info.n_pages = get<uint64_t>(b.data() + off);
  off += 8;
  if (info.n_pages != (n_tokens + layout.page_tokens - 1) / layout.page_tokens)
    return bad(fmt::format("{} pages do not hold {} tokens", info.n_pages, n_tokens));
  info.pages_offset = off;
  if (info.n_pages > (b.size() - off - 8) / layout.page_bytes() || off + info.n_pages * layout.page_bytes() + 8 != b.size())
    return bad("size does not match its page count");
  return info;
}

Result<std::unique_ptr<Session>> Session::create(std::shared_ptr<const Model> model, const ContextOptions& options) {
  std::unique_ptr<Session> s(new Session());
  KVANT_ASSIGN_OR_RETURN(s->ctx_, Context::create(std::move(model), options));
  KVANT_ASSIGN_OR_RETURN(s->seq_, s->ctx_->new_sequence());
  return s;
}

Status Session::append(std::span<const int32_t> tokens) {
  if (tokens.empty()) return Status::ok();
  KVANT_TRY(ctx_->eval(seq_, tokens));
  has_logits_ = true;
  return Status::ok();
}

Status Session::greedy(int32_t token, int64_t max_evals, const std::function<GreedyNext(int32_t)>& next,
                       int64_t* evaluated) {
  const Status s = ctx_->greedy(seq_, token, max_evals, next, evaluated);
  if (*evaluated > 0) has_logits_ = ctx_->n_logit_rows() > 0;
  return s;
}

Status Session::sync(std::span<const int32_t> tokens) {
  if (tokens.empty()) return Status::error(ErrorCode::invalid_argument, "no tokens");
  const auto& held = this->tokens();
  size_t common = 0;
  while (common < held.size() && common < tokens.size() && held[common] == tokens[common]) ++common;
  if (common == tokens.size()) --common;  // re-evaluate the last token for its logits
  ctx_->kv_cache().truncate(seq_, static_cast<int64_t>(common));
  return append(tokens.subspan(common));
}

namespace {
// log softmax(row)[token]: float exponentials (they vectorize), summed in double.
double log_prob(std::span<const float> row, int32_t token) {
  float m = row[0];
  for (float v : row) m = std::max(m, v);
  double sum = 0;
  constexpr size_t kStep = 256;
  for (size_t i = 0; i < row.size(); i += kStep) {
    float part = 0.0f;
    const size_t end = std::min(row.size(), i + kStep);
    for (size_t j = i; j < end; ++j) part += std::exp(row[j] - m);
    sum += part;
  }
  return static_cast<double>(row[static_cast<size_t>(token)]) - m - std::log(sum);
}
}  // namespace

Status Session::score(std::span<const int32_t> tokens, std::span<float> logprobs) {
  if (logprobs.size() < tokens.size())
    return Status::error(ErrorCode::invalid_argument, "score: {} outputs for {} tokens", logprobs.size(), tokens.size());
  const auto batch = static_cast<size_t>(ctx_->options().n_batch);
  std::vector<float> last;  // the logits before the next chunk's first token
  if (has_logits_) last.assign(logits().begin(), logits().end());
  for (size_t i = 0; i < tokens.size(); i += batch) {
    const auto chunk = tokens.subspan(i, std::min(batch, tokens.size() - i));
    KVANT_TRY(ctx_->eval(seq_, chunk, /*all_logits=*/true));
    has_logits_ = true;
    logprobs[i] = last.empty() ? 0.0f : static_cast<float>(log_prob(last, chunk[0]));
    // Rows in parallel: a 50k-word vocabulary makes this as costly as a small model's pass.
    const auto rows = static_cast<int64_t>(chunk.size());
#pragma omp parallel for num_threads(std::max(1, ctx_->options().threads)) schedule(static)
    for (int64_t j = 1; j < rows; ++j)
      logprobs[i + static_cast<size_t>(j)] = static_cast<float>(log_prob(ctx_->logits(j - 1), chunk[static_cast<size_t>(j)]));
    const auto tail = ctx_->logits(static_cast<int64_t>(chunk.size() - 1));
    last.assign(tail.begin(), tail.end());
  }
  return Status::ok();
}

std::span<const float> Session::logits() const {  // the last row: all-logits evaluations (score) hold several
  return has_logits_ ? ctx_->logits(ctx_->n_logit_rows() - 1) : std::span<const float>();
}

void Session::reset() {
  ctx_->kv_cache().truncate(seq_, 0);
  has_logits_ = false;
}

Status Session::save(const std::string& path, std::string_view app_data) const {
  const KvLayout& L = ctx_->kv_cache().layout();
  const auto& toks = tokens();
  std::vector<uint8_t> out;
  out.insert(out.end(), kMagic, kMagic + 8);
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, static_cast<uint32_t>(L.type));
  put<uint32_t>(out, L.n_layers);
  put<uint32_t>(out, L.n_kv_heads);
  put<uint32_t>(out, L.head_dim);
  put<uint32_t>(out, L.page_tokens);
  put<uint64_t>(out, model().file().header_checksum());
  put<uint64_t>(out, toks.size());
  for (int32_t t : toks) put<int32_t>(out, t);
  put<uint64_t>(out, app_data.size());
  out.insert(out.end(), app_data.begin(), app_data.end());
  const uint64_t n_pages = (toks.size() + L.page_tokens - 1) / L.page_tokens;
  put<uint64_t>(out, n_pages);
  const auto& ids = ctx_->kv_cache().page_ids(seq_);
  for (uint64_t i = 0; i < n_pages; ++i) {
    if (ids[i] == UINT32_MAX)
      return Status::error(ErrorCode::unsupported, "cannot save a session whose old pages a sliding window dropped");
    const size_t at = out.size();
    out.resize(at + L.page_bytes());
    ctx_->kv_cache().export_page(ids[i], out.data() + at);
  }
  put<uint64_t>(out, XXH3_64bits(out.data(), out.size()));
  // Temporary file, then rename: an interrupted save never leaves a partial file.
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Status::error(ErrorCode::io, "cannot create '{}': {}", tmp, std::strerror(errno));
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t w = ::write(fd, out.data() + done, out.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return Status::error(ErrorCode::io, "cannot write '{}': {}", tmp, std::strerror(err));
    }
    done += static_cast<size_t>(w);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Status::error(ErrorCode::io, "cannot save session to '{}': {}", path, std::strerror(err));
  }
  return Status::ok();
}

Status Session::load(const std::string& path, std::string* app_data) {
  KVANT_ASSIGN_OR_RETURN(const auto mapping, MappedFile::open(path));
  KvCache& kv = ctx_->kv_cache();
  const KvLayout& L = kv.layout();
  auto info = parse_session_file(mapping->bytes(), L, model().file().header_checksum(), ctx_->options().n_ctx,
                                 static_cast<int32_t>(model().config().vocab_size));
  if (!info) return info.status().with_context(path);
  kv.truncate(seq_, 0);
  has_logits_ = false;
  KVANT_TRY(kv.reserve(seq_, static_cast<int64_t>(info->tokens.size())));
  const auto& ids = kv.page_ids(seq_);
  for (uint64_t i = 0; i < info->n_pages; ++i)
    kv.import_page(ids[i], mapping->bytes().data() + info->pages_offset + i * L.page_bytes());
  kv.commit(seq_, info->tokens);
  if (app_data)
    app_data->assign(reinterpret_cast<const char*>(mapping->bytes().data() + info->app_data_offset),
                     info->app_data_size);
  return Status::ok();
}

}  // namespace kvant
