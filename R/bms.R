#' Random-effects Bayesian model selection for a group
#'
#' Given the log evidences (or ELBOs) of K models in each of N subjects,
#' `bms()` infers how often each model occurs in the population, allowing
#' different subjects to be best described by different models (Stephan et al.
#' 2009; Rigoux et al. 2014).  This is the random-effects analysis of SPM's
#' `spm_BMS` and the VBA toolbox's `VBA_groupBMC`.
#'
#' @section Model:
#' Model frequencies r ~ Dirichlet(alpha0); each subject's model
#' m_n ~ Categorical(r); its data y_n have log evidence L_nk under model k.
#' Variational Bayes with q(r) q(m) iterates to a fixed point
#' \deqn{E_k = \psi(\alpha_k) - \psi(\sum_j \alpha_j),\quad
#'   g_{nk} = \mathrm{softmax}_k(L_{nk} + E_k),\quad
#'   \alpha_k = \alpha_{0k} + \sum_n g_{nk},}
#' starting from alpha = alpha0 and stopping when the Euclidean norm of the
#' change in alpha falls below `tol` (SPM's rule; SPM uses `tol = 1e-3`).
#'
#' @section Outputs explained:
#' * `expected_frequency` = alpha / sum(alpha), the posterior mean of r.
#' * `exceedance[k]`: the posterior probability that model k is more frequent
#'   than every other model.  Computed exactly, not by sampling: for two models
#'   by the regularised incomplete beta function, otherwise by the
#'   one-dimensional integral
#'   \eqn{\int_0^\infty \mathrm{Ga}(q; \alpha_k, 1) \prod_{i \ne k} P(\alpha_i, q)\,dq}
#'   (P the regularised lower incomplete gamma function).
#' * `omnibus_risk` (BOR): the posterior probability of the null hypothesis
#'   that all model frequencies are equal, 1 / (1 + exp(F1 - F0)), with F1 the
#'   free energy of the random-effects model and F0 = sum_n (logsumexp_k L_nk -
#'   log K) the log evidence of the null.
#' * `protected_exceedance` = (1 - BOR) exceedance + BOR / K: exceedance
#'   probabilities that account for the chance that the differences between
#'   models are due to chance (Rigoux et al. 2014).  Report these.
#' * `ffx_log_bf`, `ffx_posterior`: the fixed-effects analysis, which assumes
#'   one model generated every subject: the group log evidence of model k is
#'   sum_n L_nk, `ffx_log_bf[i, j]` the group log Bayes factor of model i
#'   against j, `ffx_posterior` the posterior under equal prior probabilities.
#'
#' @section Prior conventions:
#' SPM places one prior count on each model (`alpha0 = 1`, the default); the VBA
#' toolbox places one prior count in total (alpha0 = 1/K), obtained with
#' `alpha0 = "vba"`.  The prior matters: with few subjects, a smaller alpha0
#' lets the data move the frequencies further.
#'
#' @section Families:
#' `families` partitions the models into families (say, models with and
#' without a history term).  The prior is then flat over families rather than
#' models: a scalar `alpha0` is the prior count of each family, shared equally
#' by its models (`"vba"`: one count in total, shared equally by the
#' families), as `spm_compare_families` and `VBA_groupBMC` do.  A family's
#' posterior is the Dirichlet with the summed alphas of its models; its omnibus
#' risk compares F1 with the null of equal family frequencies.  The
#' model-level results are those under the family prior.
#'
#' @param lme The log evidences: a numeric matrix (or data frame) with one row
#'   per subject and one column per model (column names name the models), or a
#'   list with one element per subject, each a list of fits (one per model, in
#'   the same order) from which [elbo()] is taken.
#' @param alpha0 Prior Dirichlet counts: one positive number (per model, or
#'   per family with `families`), a vector with one per model, or `"vba"` for
#'   the VBA toolbox convention (one count in total).
#' @param families Optional partition of the models into families: a vector
#'   with one family label per model, or a list of vectors of model indices or
#'   names, one per family.
#' @param tol Convergence tolerance on the change in alpha.
#' @param maxit Maximum number of iterations.
#' @param ... Unused.
#' @return An object of class `bms`: a list with `alpha`, `alpha0`,
#'   `expected_frequency`, `exceedance`, `protected_exceedance`,
#'   `omnibus_risk`, `posterior` (subjects x models: the probability that each
#'   subject's data came from each model), `free_energy` (F1),
#'   `null_free_energy` (F0), `ffx_log_evidence`, `ffx_log_bf`,
#'   `ffx_posterior`, `families` (when given: `membership`, `alpha`,
#'   `expected_frequency`, `exceedance`, `protected_exceedance`,
#'   `omnibus_risk`, `null_free_energy`, `posterior`), `iterations`,
#'   `converged` and `lme`.
#' @references
#' Stephan KE, Penny WD, Daunizeau J, Moran RJ, Friston KJ (2009). Bayesian
#' model selection for group studies. NeuroImage 46:1004-1017.
#'
#' Rigoux L, Stephan KE, Friston KJ, Daunizeau J (2014). Bayesian model
#' selection for group studies - revisited. NeuroImage 84:971-985.
#' @seealso [compare_models()] for the models of one data set.
#' @examples
#' # 5 subjects, each with log evidences -10.3 (model 1) and -9.7 (model 2)
#' lme <- matrix(rep(c(-10.3, -9.7), each = 5), 5, 2,
#'               dimnames = list(NULL, c("m1", "m2")))
#' b <- bms(lme)
#' b
#' b$ffx_log_bf["m2", "m1"]   # fixed effects: group log Bayes factor 3
#' @export
bms <- function(lme, alpha0 = 1, families = NULL, tol = 1e-10, maxit = 10000L, ...) {
  if (...length()) {
    ex <- as.list(substitute(list(...)))[-1L]
    lab <- vapply(ex, function(e) deparse(e)[1L], "")
    nm <- names(ex)
    if (!is.null(nm)) lab <- ifelse(nm == "", lab, paste(nm, "=", lab))
    stop(sprintf("bms(): unused argument(s) %s; see ?bms for the arguments.",
                 paste(lab, collapse = ", ")), call. = FALSE)
  }
  L <- bms_lme(lme)
  N <- nrow(L); K <- ncol(L)
  mn <- colnames(L)
  fam <- if (is.null(families)) NULL else bms_families(families, mn)
  a0 <- bms_alpha0(alpha0, K, fam)
  if (!is.numeric(tol) || length(tol) != 1L || !is.finite(tol) || tol <= 0)
    stop("bms(): 'tol' must be one positive number.", call. = FALSE)
  maxit <- check_count(maxit, "maxit")

  # VB for the Dirichlet-categorical model, in SPM's order: g from alpha, then alpha.
  a <- a0
  conv <- FALSE
  for (it in seq_len(maxit)) {
    G <- bms_assign(L, a)
    prev <- a
    a <- a0 + colSums(G)
    if (sqrt(sum((a - prev)^2)) < tol) { conv <- TRUE; break }
  }
  if (!conv)
    warning(sprintf("bms(): not converged after %d iterations; increase 'maxit'.", maxit), call. = FALSE)

  F1 <- bms_free_energy(L, G, a0)
  lse <- row_logsumexp(L)
  F0 <- sum(lse) - N * log(K)
  bor <- plogis(F0 - F1)  # 1 / (1 + exp(F1 - F0)), without overflow
  xp <- dirichlet_exceedance(a)
  names(a) <- names(a0) <- names(xp) <- mn
  dimnames(G) <- list(rownames(L), mn)

  gle <- colSums(L)
  bf <- outer(gle, gle, "-")
  out <- list(alpha = a, alpha0 = a0, expected_frequency = a / sum(a),
              exceedance = xp, protected_exceedance = (1 - bor) * xp + bor / K,
              omnibus_risk = bor, posterior = G, free_energy = F1, null_free_energy = F0,
              ffx_log_evidence = gle, ffx_log_bf = bf, ffx_posterior = softmax(gle),
              families = NULL, iterations = it, converged = conv, lme = L)
  if (!is.null(fam)) {
    C <- outer(fam$index, seq_along(fam$names), "==") * 1  # K x F membership
    nf <- ncol(C)
    f0 <- 1 / (nf * colSums(C)[fam$index])                  # null: equal family frequencies
    F0f <- sum(row_logsumexp(sweep(L, 2, log(f0), "+")))
    borf <- plogis(F0f - F1)
    af <- setNames(drop(crossprod(C, a)), fam$names)
    xpf <- setNames(dirichlet_exceedance(af), fam$names)
    Gf <- G %*% C
    colnames(Gf) <- fam$names
    out$families <- list(membership = setNames(fam$names[fam$index], mn), alpha = af,
                         expected_frequency = af / sum(af), exceedance = xpf,
                         protected_exceedance = (1 - borf) * xpf + borf / nf,
                         omnibus_risk = borf, null_free_energy = F0f, posterior = Gf)
  }
  class(out) <- "bms"
  out
}

# Subjects x models matrix of log evidences from a matrix, data frame or a
# list (per subject) of lists (per model) of fits.
bms_lme <- function(lme) {
  if (is.data.frame(lme)) lme <- as.matrix(lme)
  if (is.list(lme) && !is.matrix(lme)) {
    if (length(lme) == 0L) stop("bms(): 'lme' is an empty list.", call. = FALSE)
    rows <- lapply(seq_along(lme), function(i) {
      s <- lme[[i]]
      if (!is.list(s) || inherits(s, "vb_posterior"))
        stop(sprintf("bms(): element %d of 'lme' must be a list of fits, one per model.", i), call. = FALSE)
      vapply(s, function(f) {
        e <- tryCatch(elbo(f), error = function(e) NA_real_)
        if (!is.numeric(e) || length(e) != 1L) NA_real_ else e
      }, numeric(1))
    })
    k <- lengths(rows)
    if (any(k != k[1L]))
      stop("bms(): every subject in 'lme' must have the same number of models (found ",
           paste(sort(unique(k)), collapse = ", "), ").", call. = FALSE)
    M <- do.call(rbind, rows)
    nm <- names(lme[[1L]])
    colnames(M) <- if (is.null(nm) || any(nm == "")) NULL else nm
    rownames(M) <- names(lme)
    lme <- M
  }
  if (is.vector(lme) && is.numeric(lme))
    stop("bms(): 'lme' must be a matrix with one row per subject and one column per model; a vector is ambiguous (use matrix(lme, nrow = 1) for one subject).", call. = FALSE)
  if (!is.matrix(lme) || !is.numeric(lme))
    stop("bms(): 'lme' must be a numeric matrix (subjects x models) of log evidences, or a list of per-subject lists of fits.", call. = FALSE)
  if (ncol(lme) < 2L)
    stop("bms(): 'lme' has only one model (column); model selection needs at least two.", call. = FALSE)
  if (nrow(lme) < 1L) stop("bms(): 'lme' has no subjects (rows).", call. = FALSE)
  if (any(!is.finite(lme)))
    stop("bms(): 'lme' contains NA, NaN or infinite log evidences (or fits without an ELBO); every subject needs a finite log evidence for every model.", call. = FALSE)
  if (any(!is.finite(colSums(lme))) || any(!is.finite(rowSums(lme))))
    stop("bms(): the log evidences in 'lme' are too large in magnitude: their sums overflow.", call. = FALSE)
  storage.mode(lme) <- "double"
  if (is.null(colnames(lme))) colnames(lme) <- paste0("m", seq_len(ncol(lme)))
  if (anyDuplicated(colnames(lme))) stop("bms(): the model (column) names must be unique.", call. = FALSE)
  lme
}

# Families as list(index = family number per model, names = family names).
bms_families <- function(families, mn) {
  K <- length(mn)
  if (is.list(families)) {
    idx <- lapply(families, function(f) {
      if (is.character(f)) {
        bad <- setdiff(f, mn)
        if (length(bad))
          stop(sprintf("bms(): 'families' names model(s) %s that are not among the models (%s).",
                       paste(bad, collapse = ", "), paste(mn, collapse = ", ")), call. = FALSE)
        match(f, mn)
      } else if (is.numeric(f) && all(f == round(f))) as.integer(f)
      else stop("bms(): each element of a 'families' list must hold model indices or names.", call. = FALSE)
    })
    all <- unlist(idx)
    if (any(lengths(idx) == 0L) || anyDuplicated(all) || length(all) != K || !setequal(all, seq_len(K)))
      stop(sprintf("bms(): 'families' must partition the %d models: every model in exactly one non-empty family.", K),
           call. = FALSE)
    fn <- names(families)
    if (is.null(fn) || any(fn == "")) fn <- paste0("family", seq_along(idx))
    index <- integer(K)
    for (j in seq_along(idx)) index[idx[[j]]] <- j
  } else {
    if (length(families) != K || anyNA(families))
      stop(sprintf("bms(): 'families' must give one family label per model (%d), or be a list of model indices.", K),
           call. = FALSE)
    f <- factor(families, levels = unique(families))
    fn <- as.character(levels(f))
    index <- as.integer(f)
  }
  if (length(fn) < 2L)
    stop("bms(): 'families' must form at least two families.", call. = FALSE)
  list(index = index, names = fn)
}

bms_alpha0 <- function(alpha0, K, fam) {
  if (is.character(alpha0)) {
    if (!identical(alpha0, "vba"))
      stop("bms(): 'alpha0' must be positive numbers or \"vba\".", call. = FALSE)
    alpha0 <- if (is.null(fam)) 1 / K else 1 / length(fam$names)
  }
  if (!is.numeric(alpha0) || length(alpha0) < 1L || any(!is.finite(alpha0)) || any(alpha0 <= 0))
    stop("bms(): 'alpha0' must be finite and positive (prior counts of the Dirichlet over model frequencies).", call. = FALSE)
  if (!is.finite(sum(alpha0) * K))
    stop("bms(): 'alpha0' is too large: the total prior count overflows double precision. Counts beyond about 1e15 already hold the model frequencies at their prior means; give a smaller alpha0.", call. = FALSE)
  if (length(alpha0) == 1L) {
    if (is.null(fam)) return(rep(alpha0, K))
    return(alpha0 / tabulate(fam$index)[fam$index])
  }
  if (length(alpha0) != K)
    stop(sprintf("bms(): 'alpha0' has length %d; give one number or one per model (%d).", length(alpha0), K),
         call. = FALSE)
  as.numeric(alpha0)
}

# g_nk = softmax_k(L_nk + psi(alpha_k) - psi(sum alpha))
bms_assign <- function(L, a) {
  U <- sweep(L, 2, digamma(a) - digamma(sum(a)), "+")
  U <- exp(U - apply(U, 1, max))
  U / rowSums(U)
}

# Free energy of q(r) = Dir(a), q(m_n) = g_n with a = a0 + n, n_k = sum_n g_nk:
#   F1 = E_q log p(L, m, r) - E_q log q(m, r).
# Written out, the terms in E_q log r_k = psi(a_k) - psi(A) carry the factor
# (a0_k - 1) + n_k - (a_k - 1) = 0 and cancel, leaving the log
# Dirichlet-multinomial normaliser plus the assignment terms:
#   F1 = sum_nk g_nk L_nk + H(g) + sum_k D(a0_k, n_k) - D(A0, N),
#   D(x, n) = lgamma(x + n) - lgamma(x),  A0 = sum a0,  N = sum n.
# Each D is ~ n log x while F1 - F0 stays O(1), so D is split as
# n log x + lgamma_excess(x, n) and the n log x parts are combined first:
#   sum_k n_k log(a0_k / A0) + sum_k lgamma_excess(a0_k, n_k) - lgamma_excess(A0, N).
# No term then grows with alpha0 (the lgamma differences of the textbook
# form are ~ 1e102 for alpha0 = 1e100, and their rounding error swamped
# F1 - F0), and as alpha0 -> infinity F1 -> F0 and the omnibus risk -> 1/2.
# n is taken from G, not as a - a0 (which rounds to 0 when a0 is huge).
bms_free_energy <- function(L, G, a0) {
  n <- colSums(G)
  hm <- -sum(G[G > 0] * log(G[G > 0]))
  A0 <- sum(a0)
  sum(G * L) + hm + sum(n * log(a0 / A0)) + sum(lgamma_excess(a0, n)) - lgamma_excess(A0, sum(n))
}

# lgamma(x + n) - lgamma(x) - n log(x) for x > 0, n >= 0, without the
# cancellation of the direct form when x is large.  For x >= 30 Stirling's
# series lgamma(z) = (z - 1/2) log z - z + log(2 pi)/2 + s(z) gives
#   (x + n - 1/2) log1p(n / x) - n + s(x + n) - s(x),
# s(z) = 1/(12 z) - 1/(360 z^3) + 1/(1260 z^5) - 1/(1680 z^7), whose first
# omitted term 1/(1188 z^9) is below 5e-17 for z >= 30; the result is
# ~ n^2 / (2 x) with an absolute error of a few n eps.
lgamma_excess <- function(x, n) {
  x <- rep_len(as.numeric(x), max(length(x), length(n)))
  n <- rep_len(as.numeric(n), length(x))
  out <- numeric(length(x))
  big <- x >= 30
  s <- function(z) {
    z2 <- 1 / (z * z)
    (1 / 12 - z2 * (1 / 360 - z2 * (1 / 1260 - z2 / 1680))) / z
  }
  xb <- x[big]; nb <- n[big]
  out[big] <- (xb + nb - 0.5) * log1p(nb / xb) - nb + (s(xb + nb) - s(xb))
  xs <- x[!big]; ns <- n[!big]
  out[!big] <- lgamma(xs + ns) - lgamma(xs) - ns * log(xs)
  out
}

row_logsumexp <- function(L) {
  m <- apply(L, 1, max)
  m + log(rowSums(exp(L - m)))
}

# P(r_k > r_i for all i != k) under r ~ Dirichlet(a), exactly.
dirichlet_exceedance <- function(a) {
  K <- length(a)
  if (K == 2L)
    return(c(stats::pbeta(0.5, a[2], a[1]), stats::pbeta(0.5, a[1], a[2])))
  if (min(a) >= 1e16) {
    # Gamma(a_k) quantiles are no longer resolved in double precision (their
    # sd sqrt(a_k) falls below the spacing of doubles near a_k when a_k is
    # beyond ~1e30).  Here G_k = a_k + sqrt(a_k) z_k with z_k ~ N(0, 1) up to
    # a skewness term of relative size 1 / sqrt(a_k) <= 1e-8, and
    # xp_k = int phi(z) prod_{i != k} Phi((a_k - a_i + sqrt(a_k) z) / sqrt(a_i)) dz.
    return(vapply(seq_len(K), function(k) {
      f <- function(z) {
        lv <- stats::dnorm(z, log = TRUE)
        for (i in seq_len(K)[-k])
          lv <- lv + stats::pnorm((a[k] - a[i] + sqrt(a[k]) * z) / sqrt(a[i]), log.p = TRUE)
        exp(lv)
      }
      stats::integrate(f, -40, 40, rel.tol = 1e-10, abs.tol = 1e-15, subdivisions = 2000L,
                       stop.on.error = FALSE)$value
    }, numeric(1)))
  }
  # r = G / sum(G) with G_k ~ Gamma(a_k, 1) independent: r_k is largest iff
  # G_k is, so xp_k = int Ga(q; a_k) prod_{i != k} P(a_i, q) dq.  In the
  # variable t = P(a_k, q) the integral runs over [0, 1] with a bounded
  # integrand, whatever the size of the alphas (no infinite density at 0 when
  # a_k < 1, no narrow peak to miss when the alphas are large).
  # The upper half is written in s = 1 - t with the upper-tail quantile, so
  # that the far right tail (where a rarely winning model wins) is resolved.
  vapply(seq_len(K), function(k) {
    f <- function(t, upper) {
      q <- stats::qgamma(t, a[k], lower.tail = !upper)
      lv <- numeric(length(t))
      for (i in seq_len(K)[-k]) lv <- lv + stats::pgamma(q, a[i], log.p = TRUE)
      exp(lv)
    }
    piece <- function(upper) {
      stats::integrate(f, 0, 0.5, upper = upper, rel.tol = 1e-10, abs.tol = 1e-15,
                       subdivisions = 2000L, stop.on.error = FALSE)$value
    }
    piece(FALSE) + piece(TRUE)
  }, numeric(1))
}

#' @export
print.bms <- function(x, digits = 3L, ...) {
  K <- length(x$alpha)
  cat(sprintf("Random-effects Bayesian model selection: %d subjects, %d models\n\n",
              nrow(x$lme), K))
  tab <- cbind(alpha = x$alpha, `E[r]` = x$expected_frequency, xp = x$exceedance,
               pxp = x$protected_exceedance)
  print(round(tab, digits + 1L))
  cat(sprintf("\nBayesian omnibus risk (P[all models equally frequent]): %.*f\n", digits, x$omnibus_risk))
  best <- which.max(x$protected_exceedance)
  cat(sprintf("Most frequent model: %s (protected exceedance probability %.*f)\n",
              names(x$alpha)[best], digits, x$protected_exceedance[best]))
  if (!is.null(x$families)) {
    f <- x$families
    cat("\nFamilies:\n")
    print(round(cbind(alpha = f$alpha, `E[r]` = f$expected_frequency, xp = f$exceedance,
                      pxp = f$protected_exceedance), digits + 1L))
    cat(sprintf("Family omnibus risk: %.*f\n", digits, f$omnibus_risk))
  }
  invisible(x)
}

#' Summarise a group model selection
#'
#' @param object A `bms` fit.
#' @param ... Unused.
#' @return An object of class `summary.bms`: the model table (prior and
#'   posterior counts, expected frequency with its posterior sd, exceedance and
#'   protected exceedance probabilities, fixed-effects group log evidence and
#'   posterior), the omnibus risk, the free energies and the family table.
#' @examples
#' set.seed(1)
#' lme <- cbind(a = rnorm(12, -10), b = rnorm(12, -11), c = rnorm(12, -12))
#' summary(bms(lme))
#' @export
summary.bms <- function(object, ...) {
  a <- object$alpha; s <- sum(a)
  tab <- data.frame(model = names(a), alpha0 = object$alpha0, alpha = a,
                    freq = a / s, freq_sd = sqrt(a * (s - a) / (s^2 * (s + 1))),
                    xp = object$exceedance, pxp = object$protected_exceedance,
                    ffx_log_evidence = object$ffx_log_evidence,
                    ffx_posterior = object$ffx_posterior, row.names = NULL)
  fam <- NULL
  if (!is.null(object$families)) {
    f <- object$families
    fam <- data.frame(family = names(f$alpha), alpha = f$alpha, freq = f$expected_frequency,
                      xp = f$exceedance, pxp = f$protected_exceedance, row.names = NULL)
  }
  structure(list(models = tab, families = fam, omnibus_risk = object$omnibus_risk,
                 family_omnibus_risk = object$families$omnibus_risk,
                 free_energy = object$free_energy, null_free_energy = object$null_free_energy,
                 subjects = nrow(object$lme), iterations = object$iterations,
                 converged = object$converged),
            class = "summary.bms")
}

#' @export
print.summary.bms <- function(x, digits = 3L, ...) {
  cat(sprintf("Random-effects Bayesian model selection: %d subjects, %d models\n",
              x$subjects, nrow(x$models)))
  cat(sprintf("VB %s after %d iterations\n\n", if (x$converged) "converged" else "NOT converged",
              x$iterations))
  m <- x$models
  num <- vapply(m, is.numeric, logical(1))
  m[num] <- lapply(m[num], round, digits = digits + 1L)
  print(m, row.names = FALSE)
  cat("\nfreq: posterior mean model frequency (freq_sd its posterior sd); xp: exceedance\n",
      "probability; pxp: protected exceedance probability; ffx_*: fixed effects\n",
      "(one model for every subject).\n", sep = "")
  cat(sprintf("\nFree energy F1 = %.4f; null (equal frequencies) F0 = %.4f\n",
              x$free_energy, x$null_free_energy))
  cat(sprintf("Bayesian omnibus risk = 1 / (1 + exp(F1 - F0)) = %.*f\n", digits, x$omnibus_risk))
  if (!is.null(x$families)) {
    f <- x$families
    num <- vapply(f, is.numeric, logical(1))
    f[num] <- lapply(f[num], round, digits = digits + 1L)
    cat("\nFamilies:\n")
    print(f, row.names = FALSE)
    cat(sprintf("Family omnibus risk = %.*f\n", digits, x$family_omnibus_risk))
  }
  invisible(x)
}

#' Plot a group model selection
#'
#' Two panels: the posterior expected model frequencies (with +- 1 posterior
#' sd), and the exceedance probabilities with the protected exceedance
#' probabilities beside them; the omnibus risk is in the title.
#' @param x A `bms` fit.
#' @param families If `TRUE` and the fit has families, plot the families.
#' @param ... Passed to [barplot()].
#' @return The plotted table, invisibly.
#' @importFrom graphics barplot
#' @examples
#' lme <- cbind(a = c(-10, -12, -9, -11), b = c(-12, -10, -13, -12))
#' plot(bms(lme))
#' @export
plot.bms <- function(x, families = FALSE, ...) {
  if (families && !is.null(x$families)) {
    f <- x$families
    a <- f$alpha; xp <- f$exceedance; pxp <- f$protected_exceedance; bor <- f$omnibus_risk
  } else {
    a <- x$alpha; xp <- x$exceedance; pxp <- x$protected_exceedance; bor <- x$omnibus_risk
  }
  s <- sum(a)
  fr <- a / s
  sd <- sqrt(a * (s - a) / (s^2 * (s + 1)))
  op <- par(mfrow = c(1, 2), mar = c(4, 4, 3, 1))
  on.exit(par(op))
  bp <- barplot(fr, ylim = c(0, min(1, max(fr + sd) * 1.15)), col = "grey80",
                          ylab = "expected frequency E[r | y]", main = "Model frequencies", ...)
  segments(bp, pmax(fr - sd, 0), bp, fr + sd)
  abline(h = 1 / length(a), lty = 2)
  barplot(rbind(xp, pxp), beside = TRUE, ylim = c(0, 1), col = c("grey80", "grey30"),
                    ylab = "probability", main = sprintf("Exceedance (BOR = %.2f)", bor), ...)
  legend("topright", c("exceedance", "protected"), fill = c("grey80", "grey30"), bty = "n")
  invisible(data.frame(model = names(a), freq = fr, freq_sd = sd, xp = xp, pxp = pxp,
                       row.names = NULL))
}
