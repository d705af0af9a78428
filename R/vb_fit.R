#' Matrix-level variational fit of a GLM
#'
#' The workhorse behind [vb()], for users who already have a design matrix
#' (like [stats::glm.fit()]).  Binomial responses are given as successes `y`
#' out of `weights` trials.
#'
#' @param X Numeric design matrix with column names; a column named
#'   `"(Intercept)"` gets `prior_intercept`.
#' @param y Response vector (binomial: number of successes).
#' @param weights Prior weights (binomial: trials); default 1.
#' @param offset Offset on the linear-predictor scale; default 0.
#' @param exposure Poisson exposure (bin width); adds `log(exposure)` to the offset.
#' @param assign Term index per column (as `attr(model.matrix(), "assign")`),
#'   used for the default blocks of `approx = "block"`.
#' @param prior,prior_intercept,prior_precision As for [vb()]; `NULL` (the
#'   default here) gives the autoscaled defaults of [priors].
#' @inheritParams vb
#' @return A `vbfit` object without formula information.
#' @examples
#' X <- cbind("(Intercept)" = 1, x = seq(-1, 1, length.out = 50))
#' y <- 1 + 2 * X[, 2] + rnorm(50, sd = 0.3)
#' vb_fit(X, y)$coefficients
#' @export
vb_fit <- function(X, y, family = gaussian(), weights = NULL, offset = NULL, exposure = NULL,
                   prior = NULL, prior_intercept = NULL, prior_precision = NULL,
                   approx = c("fullrank", "block", "meanfield"), method = c("cavi", "sgvb"),
                   control = vb_control(), assign = NULL) {
  t0 <- proc.time()[["elapsed"]]
  family <- check_family(family)
  approx <- match.arg(approx)
  method <- match.arg(method)
  control <- as_vb_control(control)
  d <- check_glm_data(X, y, family, weights, offset, exposure)
  X <- d$X; n <- nrow(X); p <- ncol(X)
  weights <- d$weights; offset <- d$offset; exposure <- d$exposure
  ard <- inherits(prior, "vb_ard")
  if (ard && (method != "cavi" || control$binomial_method == "jj" && family$family == "binomial"))
    stop("vb(): prior = ard() is fitted by coordinate ascent: use method = \"cavi\" (and binomial_method = \"gva\").",
         call. = FALSE)
  # ARD: the coefficients' Gaussian prior scales are set by ard_cavi() from q(alpha)
  pri <- resolve_priors(X, y, weights, offset, family, if (ard) normal(0, 1) else prior, prior_intercept,
                        prior_precision, d$scan)
  if (ard) pri$specified$prior <- prior
  pa <- pri$coef
  # the engines work on the centred design when the default intercept prior
  # applies to the centred predictors (?priors); results come back uncentred.
  # The gaussian engine centres implicitly (no copy of X) where no column's
  # mean is more than 10 sd from 0 (src/glm_cavi.c).
  ce <- pri$centre
  implicit <- !is.null(ce) && family$family == "gaussian" && method == "cavi" && !ard &&
    approx != "block" && all(pa$type == 0L) && isTRUE(all(abs(ce) <= 10 * d$scan$sd))
  model <- glm_model(if (implicit) X else centre_design(X, ce), y, weights, offset, family, pa,
                     pri$precision, control)
  if (implicit) {
    model$uncentred_by <- unname(ce)
    model$uncentred_int <- which(names(ce) == "(Intercept)")
  }

  if (method == "sgvb") {
    core <- sgvb_glm(model, approx, control)
  } else if (family$family == "binomial" && control$binomial_method == "jj") {
    if (approx != "fullrank" || any(pa$type != 0L))
      stop("vb(): binomial_method = \"jj\" (the Jaakkola-Jordan bound) needs approx = \"fullrank\" and normal() priors.", call. = FALSE)
    core <- .Call(C_glm_jj, model, control)
    core$blocks <- integer(p)
  } else {
    blocks <- make_blocks(approx, colnames(X), assign, control$blocks)
    init <- glm_init(model, colnames(X), d$scan$ystats)
    core <- if (ard) ard_cavi(model, prior, ard_groups(prior, colnames(X), assign), blocks, init, control)
            else .Call(C_glm_cavi, model, init, blocks, control)
    core$blocks <- blocks
  }
  if (!is.null(pri$centre)) core <- uncentre_core(core, pri$centre)
  converged <- check_status(core$status, if (method == "sgvb") "vb() (SGVB)" else "vb()",
                            core$iterations, if (method == "sgvb") control$sgvb_tol else control$tol,
                            if (method == "sgvb") "sgvb_maxit" else "maxit")
  cn <- colnames(X)
  mu <- setNames(core$mu, cn)
  Sigma <- core$Sigma
  dimnames(Sigma) <- list(cn, cn)
  eta <- core$eta_mean
  gauss <- family$family == "gaussian"
  # gaussian fits carry no linear-predictor variances (an n p^2 pass, as much
  # work as X'X itself): predict(se.fit = TRUE) computes them on demand, and
  # deviance() reads the expected weighted residual sum of squares instead
  v <- if (!gauss) core$eta_var
  ewrss <- if (gauss) {
    if (is.numeric(core$ewrss) && length(core$ewrss) == 1L) core$ewrss
    else expected_wrss(X, y, weights, eta, Sigma)
  }
  fitted <- core$fitted # binomial: from the engine's last expectations, NA where w = 0
  if (is.null(fitted)) fitted <- response_mean(family, eta, v, control$gh_nodes)
  else if (anyNA(fitted)) {
    i <- which(is.na(fitted))
    fitted[i] <- response_mean(family, eta[i], v[i], control$gh_nodes)
  }
  yresp <- if (family$family == "binomial") ifelse(weights > 0, y / pmax(weights, 1e-300), 0) else y
  rank <- if (is.numeric(core$rank) && !is.na(core$rank)) core$rank else design_rank(X)
  separated <- family$family == "binomial" && p > 0 && is_separated(X, y, weights, mu, d$scan, eta - offset)
  fit <- list(coefficients = mu, vcov = Sigma, elbo = core$elbo, elbo_trace = core$trace,
              elbo_terms = c(elbo = core$elbo, loglik = core$loglik, kl = core$kl),
              converged = converged, status = core$status, iterations = core$iterations,
              tau = if (family$family == "gaussian" && !is.null(core$tau)) setNames(core$tau, c("shape", "rate")),
              linear.predictors = eta, linear.predictors.var = v,
              fitted.values = fitted, residuals = yresp - fitted,
              family = family, prior.weights = weights, offset = offset, exposure = exposure,
              y = y, x = X, rank = rank, approx = approx, method = method,
              blocks = core$blocks, prior = pri,
              control = control, mc_se = core$mc_se, separated = separated, ewrss = ewrss)
  if (ard) { # the Gaussian prior the final q(beta) step used: alpha at E[alpha]
    fit$ard <- ard_table(core$ard, cn)
    jj <- !is.na(core$ard$groups)
    fit$prior$coef$scale[jj] <- 1 / sqrt((core$ard$shape / core$ard$rate)[core$ard$groups[jj]])
    fit$prior$ard <- prior
  }
  if (!is.null(core$sgvb)) fit$sgvb <- core$sgvb # joint q over (beta, log tau), SGVB run data
  fit$time <- proc.time()[["elapsed"]] - t0
  class(fit) <- c("vbfit", "vb_posterior")
  fit
}

# E_q sum_t w_t (y_t - x_t' beta - offset_t)^2 under q(beta) = N(mu, Sigma),
# eta = X mu + offset: the residual part plus tr(X'WX Sigma), in row chunks
# (no n x p temporary beyond a chunk).  For gaussian fits whose engine did not
# return it (SGVB, ARD).
expected_wrss <- function(X, y, w, eta, Sigma) {
  rss <- sum(w * (y - eta)^2)
  if (ncol(X) == 0L) return(rss)
  n <- nrow(X); ch <- max(1L, as.integer(131072 %/% ncol(X)))
  tr <- 0
  for (s in seq(1L, n, by = ch)) {
    i <- s:min(n, s + ch - 1L)
    Xi <- X[i, , drop = FALSE]
    tr <- tr + sum(w[i] * rowSums((Xi %*% Sigma) * Xi))
  }
  rss + tr
}

# The messages of C_glm_response()'s checks, by its code `bad`.
response_errors <- c(
  "vb_fit(): 'y' contains NA, NaN or infinite values.",
  "vb_fit(): 'weights' contains NA, NaN or infinite values.",
  "vb_fit(): 'offset' contains NA, NaN or infinite values.",
  "vb_fit(): 'weights' must be non-negative.",
  "vb_fit(): every weight is zero, so there is no data to fit; give positive weights (binomial: numbers of trials).",
  "vb_fit(): the response is too large to compute with (its squares overflow double precision); rescale 'y'.",
  "vb_fit(): a poisson response must be non-negative whole counts.",
  "vb_fit(): for binomial(), 'weights' are numbers of trials and must be whole numbers.",
  "vb_fit(): for binomial(), 'y' must be whole numbers of successes between 0 and 'weights' (the trials).")

# What vb() checks, at the matrix level: the design, the response for the
# family, weights, offset and exposure.  Returns the cleaned pieces.
check_glm_data <- function(X, y, family, weights, offset, exposure) {
  if (!is.matrix(X) || !is.numeric(X) || is.complex(X))
    stop("vb_fit(): 'X' must be a numeric matrix.", call. = FALSE)
  n <- nrow(X); p <- ncol(X)
  if (n == 0L) stop("vb_fit(): there are no observations.", call. = FALSE)
  if (is.null(colnames(X)) && p > 0L) colnames(X) <- paste0("x", seq_len(p))
  if (!is.double(X)) storage.mode(X) <- "double"
  num <- function(v, nm) {
    if (is.null(v)) return(NULL)
    if (!is.numeric(v) || is.factor(v) || is.complex(v) || !is.null(dim(v)) && length(dim(v)) > 1L && ncol(as.matrix(v)) != 1L)
      stop(sprintf("vb_fit(): '%s' must be a numeric vector.", nm), call. = FALSE)
    as.double(v)
  }
  len <- function(v, nm) {
    if (!is.null(v) && length(v) != n)
      stop(sprintf("vb_fit(): '%s' has length %d but there are %d observations.", nm, length(v), n), call. = FALSE)
  }
  y <- num(y, "y"); len(y, "y")
  if (is.null(y)) stop("vb_fit(): 'y' is missing.", call. = FALSE)
  weights <- num(weights, "weights"); len(weights, "weights")
  offset <- num(offset, "offset"); len(offset, "offset")
  if (is.null(weights)) weights <- rep(1, n)
  if (is.null(offset)) offset <- rep(0, n)
  fam <- family$family
  if (!is.null(exposure)) {
    if (fam != "poisson")
      stop("vb_fit(): 'exposure' is for poisson() models (bin width or exposure time); use 'offset' otherwise.", call. = FALSE)
    exposure <- num(exposure, "exposure")
    if (length(exposure) != 1L) len(exposure, "exposure")
    if (any(!is.finite(exposure))) stop("vb_fit(): 'exposure' contains NA, NaN or infinite values.", call. = FALSE)
    if (any(exposure <= 0)) stop("vb_fit(): 'exposure' must be positive (a bin width or exposure time).", call. = FALSE)
    exposure <- rep_len(exposure, n)
    offset <- offset + log(exposure)
  }
  # One C pass over y, weights and offset (src/glm_model.c, C_glm_response):
  # the family's checks (response_errors), the classes of the binomial rows,
  # the moment weights and the sums the default priors and the start need.
  resp <- .Call(C_glm_response, y, weights, offset, family_code(family))
  if (resp$bad != 0L) stop(response_errors[resp$bad], call. = FALSE)
  # One C pass over X (C_design_scan): finiteness, the largest entry, the
  # moments the default priors and the centring need, and for binomial the
  # ranges of every column over the success-only, failure-only and mixed rows
  # (the separation check) -- no n x p temporary.
  scan <- .Call(C_design_scan, X, resp$mw, resp$cls)
  if (scan$status != 0L) check_status(scan$status, "vb_fit()")
  if (!scan$finite)
    stop("vb_fit(): the design matrix contains NA, NaN or infinite values; remove or impute them (na.action handles only NA).", call. = FALSE)
  # the engines form X'WX and x_t' Sigma x_t: their entries must not overflow
  if (p > 0L && !is.finite(scan$maxabs^2 * n * p))
    stop("vb_fit(): the design matrix has entries too large to compute with (X'X overflows double precision); rescale the predictors.", call. = FALSE)
  scan$cls <- resp$cls
  scan$ystats <- resp$ystats
  list(X = X, y = y, weights = weights, offset = offset, exposure = exposure, scan = scan)
}

# Numerical rank of X from a pivoted Cholesky factor of the column-scaled
# X'X: one crossprod (n p^2 / 2 flops, no n x p temporary) instead of a QR of
# X.  The engines return the rank of X'WX when they form it (fullrank and
# joint mean steps); this is the fallback.
design_rank <- function(X) {
  if (ncol(X) == 0L) return(0L)
  XtX <- crossprod(X)
  cs <- sqrt(diag(XtX))
  cs[cs == 0] <- 1
  XtX <- XtX / tcrossprod(cs)
  attr(suppressWarnings(chol(XtX, pivot = TRUE, tol = 1e-9)), "rank")
}

# (Quasi-)complete separation: the binomial likelihood has no finite maximum,
# so the posterior is held only by the prior.  That happens exactly when some
# direction d != 0 has x_i'd >= 0 for every row with only successes, <= 0 for
# every row with only failures and = 0 for rows with both.  Rather than refit
# (glm.fit's warning is a heuristic, and translated), check candidate
# directions exactly: each column alone and the posterior mean, each with the
# best intercept when the model has one.  A note is printed only with such a
# certificate in hand; separation along other directions can go unreported.
# Cost: one X mu, and a pass over only those columns that a few rows do not
# already rule out (a column at a time, no copy of X); each direction is
# judged from the ranges of u = X d over the three kinds of rows.
# With `scan` (check_glm_data()'s design scan, which holds every column's
# ranges over the three kinds of rows) no column is read again here, and with
# `eta` (the fit's linear predictor less the offset, X mu) neither is X for
# the posterior mean's direction.
is_separated <- function(X, y, weights, mu = NULL, scan = NULL, eta = NULL) {
  fast <- !is.null(scan$ranges) && !is.null(scan$cls)
  if (fast) { # the kinds of rows are in the scan (a mixed row has finite ranges)
    has_mix <- is.finite(scan$ranges[5L, 1L])
    ranges_of <- function(u) .Call(C_class_ranges, u, scan$cls)
  } else {
    side <- as.integer(y == weights) - as.integer(y == 0) # all successes, all failures, mixed
    side[weights <= 0] <- NA_integer_
    pos <- which(side > 0L); neg <- which(side < 0L); mix <- which(side == 0L)
    has_mix <- length(mix) > 0L
    rng <- function(u, idx) if (length(idx)) range(u[idx]) else c(Inf, -Inf)
    ranges_of <- function(u) c(rng(u, pos), rng(u, neg), rng(u, mix))
  }
  int <- which(colnames(X) == "(Intercept)")
  int <- if (!is.null(scan$ranges)) int[scan$ones_pos[int] %in% TRUE]
         else int[vapply(int, function(j) all(X[weights > 0, j] == 1), TRUE)]
  cols <- setdiff(seq_len(ncol(X)), int)
  tol <- 1e-10
  # r: ranges of u over the success-only, failure-only and mixed rows
  certify <- function(r) {
    sc <- max(abs(r[is.finite(r)]), 1e-300)
    r <- r / sc
    cc <- 0
    if (length(int)) {
      lo <- -r[1]; hi <- -r[4]
      if (has_mix) {
        if (r[6] - r[5] > tol) return(FALSE)
        cc <- -r[5]
        if (cc < lo - tol || cc > hi + tol) return(FALSE)
      } else {
        if (lo > hi + tol) return(FALSE)
        cc <- if (is.finite(lo)) lo else if (is.finite(hi)) hi else 0
      }
    }
    e <- r + cc
    e[1] >= -tol && e[4] <= tol && (!has_mix || max(abs(e[5:6])) <= tol) &&
      any(abs(e[is.finite(e)]) > tol)
  }
  both <- function(u) {
    r <- ranges_of(u)
    certify(r) || certify(-r[c(2, 1, 4, 3, 6, 5)])
  }
  # A column cannot separate (in either direction, with or without the
  # intercept) once some success-only row lies below a failure-only row and
  # another above one: checked on a few rows of each kind first, so only the
  # undecided columns cost a pass over X.
  if (fast) {
    r <- scan$ranges[, cols, drop = FALSE]
    if (length(cols) && (any(certify_cols(r, length(int) > 0L, has_mix, tol)) ||
                         any(certify_cols(-r[c(2, 1, 4, 3, 6, 5), , drop = FALSE], length(int) > 0L,
                                          has_mix, tol))))
      return(TRUE)
    open <- integer(0)
  } else {
    open <- cols
    if (length(cols) && length(pos) && length(neg)) {
      A <- X[utils::head(pos, 64L), cols, drop = FALSE]; B <- X[utils::head(neg, 64L), cols, drop = FALSE]
      mix_order <- apply(A, 2L, min) < apply(B, 2L, max) & apply(A, 2L, max) > apply(B, 2L, min)
      open <- cols[!mix_order]
    }
  }
  for (j in open) if (both(X[, j])) return(TRUE)
  if (!is.null(mu) && length(cols) > 1L) {
    m <- mu; m[int] <- 0
    # u = X m; from the fit's linear predictor (eta = offset + X mu) when the
    # intercept, if any, is one column of ones on the rows that count
    u <- if (!is.null(eta) && length(int) <= 1L) eta - sum(mu[int]) else drop(X %*% m)
    if (certify(ranges_of(u))) return(TRUE)
  }
  FALSE
}

# certify() over columns at once: r holds, per column, the ranges over the
# success-only, failure-only and mixed rows (6 x k, min and max of each).
certify_cols <- function(r, has_int, has_mix, tol) {
  a <- abs(r)
  a[!is.finite(a)] <- 0
  sc <- pmax(a[1, ], a[2, ], a[3, ], a[4, ], a[5, ], a[6, ], 1e-300)
  r <- r / rep(sc, each = 6L)
  cc <- numeric(ncol(r)); ok <- rep(TRUE, ncol(r))
  if (has_int) {
    lo <- -r[1, ]; hi <- -r[4, ]
    if (has_mix) {
      ok <- r[6, ] - r[5, ] <= tol
      cc <- -r[5, ]
      ok <- ok & cc >= lo - tol & cc <= hi + tol
    } else {
      ok <- lo <= hi + tol
      cc <- ifelse(is.finite(lo), lo, ifelse(is.finite(hi), hi, 0))
    }
  }
  e <- r + rep(cc, each = 6L)
  big <- colSums(is.finite(e) & abs(e) > tol) > 0
  ok & e[1, ] >= -tol & e[4, ] <= tol & (!has_mix | pmax(abs(e[5, ]), abs(e[6, ])) <= tol) & big
}

family_code <- function(family) match(family$family, c("gaussian", "poisson", "binomial")) - 1L

# The list the C core reads (vb_glm_unpack in src/glm.c).
glm_model <- function(X, y, weights, offset, family, pa, prior_precision, control) {
  gh <- if (family$family == "binomial") gauss_hermite(control$gh_nodes) else list(x = numeric(0), w = numeric(0))
  list(X = X, y = as.double(y), offset = as.double(offset), weights = as.double(weights),
       family = family_code(family), prior_type = as.integer(pa$type),
       prior_location = as.double(pa$location), prior_scale = as.double(pa$scale),
       tau_prior = c(prior_precision$shape, prior_precision$rate),
       gh_x = gh$x, gh_w = gh$w)
}

# Rebuild the C model list of a fit (for the log joint, diagnostics, SGVB).
# With the default intercept prior the model is that of the centred design
# (theta_c = T theta, see centre_theta()); `centre` says so.
fit_model <- function(fit) {
  if (is.null(fit[["x"]])) stop("this fit was made with x = FALSE; refit with x = TRUE.", call. = FALSE)
  ce <- fit[["prior"]][["centre"]]
  m <- glm_model(centre_design(fit[["x"]], ce), fit[["y"]], fit$prior.weights, fit$offset,
                 fit$family, fit$prior$coef, fit$prior$precision, fit$control)
  m$centre <- ce
  m
}

# Centred coordinates of draws theta (columns; rows beyond the coefficients,
# such as log tau, unchanged): alpha = beta_0 + centre' beta.
centre_theta <- function(theta, centre) {
  if (is.null(centre)) return(theta)
  p <- length(centre)
  int <- which(names(centre) == "(Intercept)")
  theta[int, ] <- theta[int, ] + colSums(centre * theta[seq_len(p), , drop = FALSE])
  theta
}

# An engine result on the centred design, mapped to the coefficients of the
# design as built: mu = A mu_c, Sigma = A Sigma_c A' (A = T^-1; exact, the
# linear predictor and the ELBO are unchanged).
uncentre_core <- function(core, centre) {
  core$mu <- uncentre_mean(core$mu, centre)
  core$Sigma <- uncentre_cov(core$Sigma, centre)
  if (!is.null(core$sgvb)) {
    d <- length(core$sgvb$mu)
    Aj <- uncentre_matrix(centre, d)
    core$sgvb$mu <- setNames(drop(Aj %*% core$sgvb$mu), names(core$sgvb$mu))
    core$sgvb$Sigma <- structure(Aj %*% core$sgvb$Sigma %*% t(Aj), dimnames = dimnames(core$sgvb$Sigma))
    if (!is.null(core$sgvb$L)) core$sgvb$L <- Aj %*% core$sgvb$L
  }
  core
}

# A = I - e_int c' (c = centre, 0 at the intercept) applied in O(p^2):
# A mu, and A S A' = S - e u' - u e' + (c' S c) e e' with u = S c.
uncentre_mean <- function(mu, centre) {
  int <- which(names(centre) == "(Intercept)")
  cc <- centre; cc[int] <- 0
  mu[int] <- mu[int] - sum(cc * mu)
  mu
}
uncentre_cov <- function(S, centre) {
  int <- which(names(centre) == "(Intercept)")
  if (!length(int)) return(S)
  cc <- centre; cc[int] <- 0
  u <- drop(S %*% cc)
  S[int, ] <- S[int, ] - u
  S[, int] <- S[, int] - u
  S[int, int] <- S[int, int] + sum(cc * u)
  S
}

# Gauss-Hermite rule for E g(Z), Z ~ N(0, 1/2) scaled: nodes x, weights summing
# to one, so E g(m + sqrt(2 v) x) integrates against N(m, v).  Golub-Welsch.
gauss_hermite <- function(k) {
  key <- as.character(k)
  if (!is.null(gh <- gh_cache[[key]])) return(gh)
  gh_cache[[key]] <- gh <- gauss_hermite_rule(k)
  gh
}
# the rules computed so far (an eigen() of k x k each), by k
gh_cache <- new.env(parent = emptyenv())
gauss_hermite_rule <- function(k) {
  J <- matrix(0, k, k)
  off <- sqrt(seq_len(k - 1L) / 2)
  J[cbind(1:(k - 1L), 2:k)] <- off
  J[cbind(2:k, 1:(k - 1L))] <- off
  e <- eigen(J, symmetric = TRUE)
  list(x = rev(e$values), w = rev(e$vectors[1L, ]^2))
}

# Starting values: prior locations, the intercept at its no-covariate estimate;
# q(tau) from the marginal variance of y.  `ys`: the sums over the rows that
# count (C_glm_response(), as check_glm_data() returns them; made here if not given).
glm_init <- function(model, cn, ys = NULL) {
  mu <- model$prior_location
  i <- which(cn == "(Intercept)")
  if (is.null(ys)) ys <- .Call(C_glm_response, model$y, model$weights, model$offset, model$family)$ystats
  if (length(i) == 1L && ys[["npos"]] > 0) {
    mu[i] <- switch(model$family + 1L,
      ys[["swyo"]] / ys[["sw"]],
      log((ys[["swy"]] + 0.5) / ys[["swexpoff"]]),
      qlogis((ys[["npos"]] * ys[["mean_y"]] + 0.5) / (ys[["sw"]] + 1)) - ys[["mean_off"]])
  }
  a0 <- model$tau_prior[1]; b0 <- model$tau_prior[2]
  c(mu, a0 + ys[["npos"]] / 2, b0 + 0.5 * ys[["ydev2"]])
}

# Block labels 0..B-1 for the C engine.
make_blocks <- function(approx, cn, assign, user) {
  p <- length(cn)
  if (approx == "fullrank") return(integer(p))
  if (approx == "meanfield") return(seq_len(p) - 1L)
  if (is.null(user)) {
    lab <- if (is.null(assign)) seq_len(p) else assign
  } else if (is.list(user)) {
    all <- unlist(user)
    if (!is.character(all) || anyDuplicated(all) || !setequal(all, cn))
      stop("vb_control(blocks = ): the blocks must partition the coefficients: every coefficient name (",
           paste(cn, collapse = ", "), ") exactly once.", call. = FALSE)
    lab <- integer(p)
    for (b in seq_along(user)) lab[match(user[[b]], cn)] <- b
  } else {
    if (length(user) != p || anyNA(user))
      stop(sprintf("vb_control(blocks = ): give one block label per coefficient (%d), or a list of names.", p), call. = FALSE)
    lab <- user
  }
  match(lab, unique(lab)) - 1L
}

# Posterior mean of the mean response given eta ~ N(m, v).
response_mean <- function(family, m, v, gh_nodes = 32L) {
  switch(family$family,
    gaussian = m,
    poisson = exp(m + v / 2),
    binomial = .Call(C_binomial_mean, as.double(m), as.double(v), gauss_hermite(gh_nodes)))
}
