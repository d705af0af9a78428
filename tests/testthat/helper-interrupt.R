# Seconds from a SIGINT to the end of `expr`, run in a forked child; NA where
# forking is unavailable.  The child reports what stopped it ("error" or
# "interrupt" condition, or "done" if it finished first).
interrupt_latency <- function(expr, after = 0.5) {
  if (.Platform$OS.type != "unix") return(NA)
  f <- tempfile()
  job <- parallel::mcparallel({
    how <- tryCatch({ force(expr); "done" },
                    interrupt = function(e) "interrupt", error = function(e) conditionMessage(e))
    writeLines(c(format(as.numeric(Sys.time()), digits = 15), how), f)
  }, silent = TRUE)
  Sys.sleep(after)
  sent <- as.numeric(Sys.time())
  tools::pskill(job$pid, tools::SIGINT)
  parallel::mccollect(job, wait = TRUE, timeout = 60)
  if (!file.exists(f)) return(NA)
  r <- readLines(f)
  structure(as.numeric(r[1]) - sent, how = r[2])
}
