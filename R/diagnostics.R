#' Diagnose a variational fit by importance sampling
#'
#' Draws theta_1..S from q and forms the log importance ratios
#' r_s = log p(y, theta_s) - log q(theta_s).  Two summaries follow.
#'
#' * **Pareto k-hat** (PSIS; Vehtari et al., Yao et al. 2018): a generalised
#'   Pareto distribution is fitted to the largest ratios by the profile
#'   estimator of Zhang & Stephens (2009), with the weak prior of PSIS that
#'   shrinks k-hat towards 0.5 by 10 pseudo-observations.  Yao, Vehtari,
#'   Simpson & Gelman (2018) read k-hat as: below 0.5, q is close to the
#'   posterior and importance sampling from it is reliable; between 0.5 and
#'   0.7, q is imperfect but importance sampling (PSIS) can still correct it;
#'   above 0.7, q is far from the posterior and neither it nor the importance
#'   weights should be trusted.  A large k-hat for a small-count Poisson model
#'   can coexist with an accurate ELBO: treat it as a warning, not a verdict.
#' * **IWAE bound** (Burda, Grosse & Salakhutdinov 2016):
#'   L_K = E log((1/K) sum_k exp(r_k)), estimated by splitting the S draws
#'   into floor(S/K) groups of K, with its standard error across groups.
#'   ELBO = L_1 <= L_K <= L_{K+1} <= log p(y), so L_K is a tighter evidence
#'   estimate for model comparison.  The PSIS estimate of log p(y),
#'   log of the mean smoothed weight, is reported as `logZ_psis`.
#'
#' Every approximate posterior (class `vb_posterior`) reaches this function
#' the same way, through two internal generics: `q_sample(fit, S)` draws
#' theta_1..S from q and returns them with log q(theta_s), and
#' `log_joint(fit, theta)` evaluates log p(y, theta_s).  GLM fits sample
#' (beta, log tau) from q(beta) q(tau) (SGVB: their joint Gaussian q) and
#' evaluate the log joint in C; the parent's q_sample() draws from the
#' Gaussian q over the coefficients.
#'
#' @param fit Any approximate posterior (`vb_posterior`): a fit from [vb()]
#'   (CAVI or SGVB), [vb_density()] or [vb_lds()].  A `vb()` fit needs its
#'   design matrix and response (the defaults `x = TRUE, y = TRUE`).
#' @param S Number of draws from q.
#' @param K Group size(s) of the IWAE bound, each at most `S`.
#' @param ... Unused.
#' The **effective sample size** of the Pareto-smoothed importance weights,
#' ESS = (sum w)^2 / sum w^2, is reported beside k-hat, and the label never
#' says "good" when it is below 10% of S (or "ok" below 1%): k-hat is fitted
#' to the largest ratios and cannot see posterior mass that q misses.  Draws
#' where the log density is -Inf (rejected) have weight 0; with fewer than 100
#' finite log ratios k-hat is too noisy to read and is labelled so.
#'
#' k-hat is itself an estimate: `khat_interval` is its 5%-95% spread over 100
#' bootstrap resamples of the log ratios, and the label says so when that
#' interval spans the threshold (near-constant ratios can give k-hat above
#' 0.7 at S = 4000 and below 0.5 at S = 20000).
#'
#' Where PSIS is reliable (k-hat below the threshold), q's means and sds
#' are compared with the importance-weighted ones, coordinate by coordinate
#' on the scale the fit reports (a bounded [vb_density()] fit's constrained
#' scale): `is_shift` is the largest mean shift in weighted
#' sds and `is_sd_ratio` the ratios of q's sds to the weighted ones; a shift
#' above 0.1 sd or a ratio more than 10% from 1 is stated in the label, so a
#' q that is too narrow is reported even when k-hat is below 0.7.
#'
#' @return An object of class `vb_diagnosis`: `khat`, `khat_label`,
#'   `khat_interval`, `ess`, `is_shift`, `is_sd_ratio`,
#'   `n_finite` (draws with a finite log ratio),
#'   `iwae` and `iwae_se` (one per `K`), `K`, `elbo` (the fit's ELBO),
#'   `elbo_mc` and `elbo_mc_se` (mean of r and its standard error),
#'   `logZ_psis`, `S`, and the log ratios `log_ratios`.
#' @references Zhang, J. & Stephens, M. A. (2009). A new and efficient
#'   estimation method for the generalized Pareto distribution.
#'   Technometrics 51, 316-325.  Yao, Y., Vehtari, A., Simpson, D. &
#'   Gelman, A. (2018). Yes, but did it work?: Evaluating variational
#'   inference. ICML.  Burda, Y., Grosse, R. & Salakhutdinov, R. (2016).
#'   Importance weighted autoencoders. ICLR.
#' @examples
#' set.seed(1)
#' fit <- vb(mpg ~ wt, data = mtcars)
#' vb_diagnose(fit, S = 1000, K = c(1, 10, 100))
#' @export
vb_diagnose <- function(fit, S = 4000, K = c(1, 10, 100), ...) {
  if (!inherits(fit, "vb_posterior"))
    stop("vb_diagnose(): 'fit' must be a fit from vb(), vb_density() or vb_lds().", call. = FALSE)
  S <- check_count(S, "S")
  if (S < 10L) stop("vb_diagnose(): 'S' must be at least 10 draws.", call. = FALSE)
  if (!is.numeric(K) || length(K) < 1L || any(!is.finite(K)) || any(K < 1) || any(K != round(K)) ||
      any(K > S))
    stop("vb_diagnose(): 'K' must be whole numbers between 1 and S.", call. = FALSE)
  K <- as.integer(K)
  qs <- q_sample(fit, S)
  lj <- log_joint(fit, qs[["theta"]])
  if (!is.numeric(lj) || length(lj) != S || length(qs[["logq"]]) != S)
    stop(sprintf("vb_diagnose(): internal error: the '%s' methods of q_sample() and log_joint() must give one value per draw.",
                 class(fit)[1L]), call. = FALSE)
  lr <- lj - qs[["logq"]]
  if (any(is.nan(lr)) || any(lr == Inf))
    stop("vb_diagnose(): the log joint density was NaN or infinite at draws from q.", call. = FALSE)
  fin <- is.finite(lr)
  nfin <- sum(fin)
  # k-hat from the finite ratios (a draw where log p = -Inf has weight 0);
  # the ESS of the Pareto-smoothed weights over all S draws
  ps <- if (nfin >= 10L) psis(lr[fin]) else list(khat = NA_real_, logZ = NA_real_, lw = lr[fin])
  w <- if (nfin) exp(ps$lw - max(ps$lw)) else numeric(0)
  ess <- if (nfin) sum(w)^2 / sum(w^2) else 0
  logZ <- if (nfin) ps$logZ + log(nfin / S) else -Inf
  iw <- vapply(K, function(k) iwae(lr, k), numeric(2))
  # how noisy k-hat is at this S: its spread over bootstrap resamples of the
  # finite log ratios (k-hat is fitted to the largest ~3 sqrt(S) of them)
  ki <- if (is.finite(ps$khat)) khat_boot(lr[fin]) else c(NA_real_, NA_real_)
  lab <- khat_label(ps$khat, ess, S, nfin)
  thr <- min(1 - 1 / log10(S), 0.7)
  if (all(is.finite(ki)) && ki[1] < thr && ki[2] >= thr && nfin >= 100)
    lab <- sprintf("%s; k-hat is uncertain at S = %d (bootstrap 90%% interval %.2f-%.2f spans %.2f): rerun with a larger S",
                   lab, as.integer(S), ki[1], ki[2], thr)
  # q's moments against the importance-weighted ones (Yao et al. 2018): where
  # PSIS is reliable, a weighted mean or sd far from q's says q is off
  # (on the scale the fit reports: a vb_density() fit's constrained one)
  th <- qs[["theta"]][, fin, drop = FALSE]
  if (is.function(fit[["constrain"]]) && ncol(th))
    th <- constrain_draws(fit[["constrain"]], th, fit[["par_names"]], "vb_diagnose()")
  mom <- is_moments(th, w)
  if (is.finite(ps$khat) && ps$khat < thr && nfin >= 100 && is.finite(mom$shift) &&
      (mom$shift > 0.1 || max(abs(mom$sd_ratio - 1)) > 0.1))
    lab <- sprintf("%s; but q's moments are off: importance weighting moves a mean by %.2f sd and puts q's sds at %.2f-%.2f of the weighted ones (use the weighted draws, or a richer family)",
                   lab, mom$shift, min(mom$sd_ratio), max(mom$sd_ratio))
  out <- list(khat = ps$khat, khat_label = lab, khat_interval = ki, ess = ess,
              is_shift = mom$shift, is_sd_ratio = mom$sd_ratio,
              n_finite = nfin, iwae = iw[1, ], iwae_se = iw[2, ],
              K = K, elbo = fit[["elbo"]], elbo_mc = mean(lr),
              elbo_mc_se = if (all(fin)) stats::sd(lr) / sqrt(S) else NA_real_,
              logZ_psis = logZ, S = S, log_ratios = lr)
  class(out) <- "vb_diagnosis"
  out
}

# Per coordinate of the draws (d x S), q's mean and sd against the
# importance-weighted ones: the largest |mean shift| in weighted sds, and the
# ratios sd_q / sd_weighted.
is_moments <- function(theta, w) {
  theta <- as.matrix(theta)
  w <- as.vector(w)
  if (!length(w) || ncol(theta) != length(w) || ncol(theta) < 2L)
    return(list(shift = NA_real_, sd_ratio = NA_real_))
  w <- w / sum(w)
  mq <- rowMeans(theta)
  sq <- sqrt(pmax(rowMeans((theta - mq)^2), 0))
  mw <- drop(theta %*% w)
  sw <- sqrt(pmax(drop(((theta - mw)^2) %*% w), 0))
  ok <- sw > 0 & is.finite(sw)
  if (!any(ok)) return(list(shift = NA_real_, sd_ratio = NA_real_))
  list(shift = max(abs(mq - mw)[ok] / sw[ok]), sd_ratio = unname(sq[ok] / sw[ok]))
}

# The reading of k-hat (Yao et al. 2018; the sample-size threshold
# min(1 - 1/log10 S, 0.7) of Vehtari et al. 2024), never "good" when the
# effective sample size of the importance weights is small: k-hat is fitted
# to the largest ratios and cannot see mass that q misses altogether.  With
# fewer than 100 finite log ratios k-hat is too noisy to read.
khat_label <- function(k, ess = NA, S = NA, nfin = S) {
  if (is.finite(nfin) && nfin < 100)
    return(sprintf("too noisy to read: only %d of %d log ratios are finite (q puts its mass where the log density is -Inf); do not trust q",
                   as.integer(nfin), as.integer(S)))
  if (!is.finite(k)) return("not estimable")
  thr <- if (is.finite(S)) min(1 - 1 / log10(S), 0.7) else 0.7
  essf <- if (is.finite(ess) && is.finite(S)) ess / S else 1
  es <- if (is.finite(ess)) sprintf("; importance-sampling ESS %.0f of %d", ess, as.integer(S)) else ""
  if (k >= thr)
    sprintf("bad (k >= %.2f): q is far from the posterior; do not trust q or the importance weights%s", thr, es)
  else if (essf < 0.01)
    sprintf("bad: k-hat %.2f, but the effective sample size is tiny%s; q misses much of the posterior", k, es)
  else if (k < 0.5 && essf >= 0.1)
    sprintf("good (k < 0.5): q is close to the posterior; importance sampling from q is reliable%s", es)
  else sprintf("ok (k < %.2f): q is imperfect, but PSIS can still correct it%s", thr, es)
}

#' @export
print.vb_diagnosis <- function(x, digits = 4, ...) {
  cat(sprintf("Importance-sampling diagnostics of q (%d draws)\n", x$S))
  ki <- x$khat_interval
  cat(sprintf("  Pareto k-hat: %.3f%s  %s\n", x$khat,
              if (length(ki) == 2L && all(is.finite(ki))) sprintf(" (bootstrap 90%%: %.2f-%.2f)", ki[1], ki[2]) else "",
              x$khat_label))
  if (!is.null(x$ess))
    cat(sprintf("  Effective sample size of the (smoothed) importance weights: %.1f of %d draws\n",
                x$ess, x$S))
  if (!is.null(x$is_shift) && is.finite(x$is_shift))
    cat(sprintf("  q against the importance-weighted moments: largest mean shift %.3f sd; sd ratios %.3f-%.3f\n",
                x$is_shift, min(x$is_sd_ratio), max(x$is_sd_ratio)))
  cat(sprintf("  ELBO %.*f (Monte Carlo over the draws %.*f, se %.2g)\n", digits, x$elbo, digits,
              x$elbo_mc, x$elbo_mc_se))
  tab <- data.frame(K = x$K, IWAE = round(x$iwae, digits), se = signif(x$iwae_se, 2),
                    groups = x$S %/% x$K)
  cat("  Importance-weighted bounds on log p(y):\n")
  print(tab, row.names = FALSE)
  cat(sprintf("  PSIS estimate of log p(y): %.*f\n", digits, x$logZ_psis))
  invisible(x)
}

# 5% and 95% quantiles of k-hat over B bootstrap resamples of the log
# ratios (the RNG state is restored afterwards).
khat_boot <- function(lr, B = 100L) {
  # the caller's stream is left where it was: a diagnostic should not shift
  # the draws that follow it
  if (exists(".Random.seed", envir = globalenv(), inherits = FALSE)) {
    seed <- get(".Random.seed", envir = globalenv(), inherits = FALSE)
    on.exit(assign(".Random.seed", seed, envir = globalenv()), add = TRUE)
  }
  k <- vapply(seq_len(B), function(b) psis(lr[sample.int(length(lr), replace = TRUE)])$khat, 0)
  k <- k[is.finite(k)]
  if (length(k) < 10L) return(c(NA_real_, NA_real_))
  stats::quantile(k, c(0.05, 0.95), names = FALSE)
}

# IWAE bound with groups of K from the log ratios: c(estimate, se).
iwae <- function(lr, K) {
  B <- length(lr) %/% K
  g <- matrix(lr[seq_len(B * K)], K, B)
  m <- apply(g, 2L, max)
  v <- m + log(colMeans(exp(sweep(g, 2L, m))))
  c(mean(v), if (B > 1L) stats::sd(v) / sqrt(B) else NA_real_)
}

# Pareto-smoothed importance sampling of log ratios lr: the tail of the
# largest M = ceiling(min(S/5, 3 sqrt(S))) ratios is fitted by a generalised
# Pareto (gpd_fit), k-hat shrunk by the PSIS weak prior, the tail replaced by
# the fitted quantiles (capped at the largest raw ratio).
psis <- function(lr) {
  S <- length(lr)
  shift <- max(lr)
  lr <- lr - shift
  M <- ceiling(min(0.2 * S, 3 * sqrt(S)))
  o <- order(lr)
  if (M < 5L || S - M < 1L) return(list(khat = NA_real_, logZ = NA_real_, lw = lr + shift))
  tail_ix <- o[(S - M + 1L):S]
  cut <- lr[o[S - M]]
  x <- exp(lr[tail_ix]) - exp(cut)
  if (all(x <= 0)) return(list(khat = -Inf, logZ = log(mean(exp(lr))) + shift, lw = lr + shift))
  fit <- gpd_fit(x)
  k <- (M * fit$k + 10 * 0.5) / (M + 10)
  lw <- lr
  if (is.finite(k)) {
    p <- (seq_len(M) - 0.5) / M
    qx <- if (abs(k) < 1e-12) -fit$sigma * log1p(-p) else fit$sigma * ((1 - p)^(-k) - 1) / k
    lw[tail_ix] <- pmin(log(qx + exp(cut)), 0)
  }
  list(khat = k, logZ = log(mean(exp(lw))) + shift, lw = lw + shift)
}

# Generalised Pareto fit of exceedances x > 0 by the Zhang & Stephens (2009)
# estimator: with theta = -k / sigma, the profile log-likelihood is
# n (log(-theta / k(theta)) - k(theta) - 1), k(theta) = mean log(1 - theta x);
# theta-hat is its posterior mean over a grid of m = 30 + floor(sqrt(n))
# points theta_j = 1/x_(n) + (1 - sqrt(m / (j - 1/2))) / (3 x_(q)), x_(q) the
# lower-quartile order statistic, with weights proportional to the
# exponentiated profile likelihood.  Shape k > 0 means a heavy tail with
# moments of order below 1/k.
gpd_fit <- function(x) {
  x <- sort(x)
  n <- length(x)
  m <- 30L + floor(sqrt(n))
  xq <- x[max(1L, floor(n / 4 + 0.5))]
  if (!(xq > 0)) xq <- x[which(x > 0)[1L]]
  j <- seq_len(m)
  theta <- 1 / x[n] + (1 - sqrt(m / (j - 0.5))) / (3 * xq)
  kfun <- function(t) mean(log1p(-t * x))
  kk <- vapply(theta, kfun, 0)
  ll <- n * (log(-theta / kk) - kk - 1)
  ll[!is.finite(ll)] <- -Inf
  w <- exp(ll - max(ll))
  w <- w / sum(w)
  th <- sum(w * theta)
  k <- kfun(th)
  list(k = k, sigma = -k / th)
}
