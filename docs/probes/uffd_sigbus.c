/*
 * uffd_sigbus.c - probe: can userfaultfd's UFFD_FEATURE_SIGBUS, together with
 * KVM_CAP_MEMORY_FAULT_INFO, make KVM_RUN itself return on the vCPU thread
 * with KVM_EXIT_MEMORY_FAULT (exit reason 39) and the faulting guest-physical
 * address (run->memory_fault.{flags,gpa,size}) when the guest touches a page
 * that was dropped with madvise(MADV_DONTNEED)?
 *
 * Part 1 (one forked child per case, each guarded by alarm(5) in the child and
 * a 12 s SIGKILL in the parent): guest RAM registered MISSING with a
 * userfaultfd opened with UFFD_FEATURE_SIGBUS; one page is discarded and the
 * guest reads or writes it once, from CPL3 (guest user mode) and from CPL0
 * (guest kernel). Every KVM_RUN is printed as returned: return value, errno,
 * exit_reason (preset to the sentinel 0xffffffff), the memory_fault words
 * (preset to 0xa5a5...), RIP, time spent in the ioctl. The first EFAULT is
 * re-entered unchanged (is it repeatable?), the second is resolved with
 * UFFDIO_ZEROPAGE (read) or UFFDIO_COPY (write) and re-entered. A KVM_EXIT_MMIO
 * read is completed with 0x5a5a... as data. For comparison: two default-mode
 * cases at CPL0 (handler thread answering UFFDIO_ZEROPAGE/COPY, no SIGBUS),
 * and two where the handler only signals the vCPU thread and nothing resolves
 * (the project's current kick; CPL3 and CPL0), which run until the alarm; a
 * watchdog thread reports a KVM_RUN that SIGALRM does not bring back (the
 * CPL0 one here: the parent kills it after 12 s). KVM_CHECK_EXTENSION and
 * KVM_ENABLE_CAP for KVM_CAP_MEMORY_FAULT_INFO are tried on /dev/kvm, the VM
 * and the vCPU.
 *
 * Part 2 (round trip, CPL3): a guest user-mode loop touches N discarded pages
 * in a row, timing each touch with rdtsc (converted with KVM_GET_TSC_KHZ).
 * Paths, interleaved round by round in one process (round 0 is a warm-up):
 *   none      no userfaultfd: the kernel's own zero-page/anon first touch
 *   plain     handler thread reads uffd events, answers UFFDIO_ZEROPAGE (read)
 *             or UFFDIO_COPY (write); the vCPU thread stays blocked in KVM
 *   sigbus-oob UFFD_FEATURE_SIGBUS: KVM_RUN fails with EFAULT; the vCPU thread
 *             takes the GPA from the probe's own bookkeeping (what a filled
 *             memory_fault.gpa would give for free), resolves it with
 *             UFFDIO_ZEROPAGE (read) or UFFDIO_COPY (write) and re-enters
 *   sigbus    UFFD_FEATURE_SIGBUS: KVM_RUN fails with EFAULT; the vCPU thread
 *             finds the GPA (memory_fault.gpa if exit_reason is 39, else
 *             KVM_GET_REGS + KVM_TRANSLATE of the operand register), resolves
 *             it with ZEROPAGE/COPY and re-enters
 *   sigbus+ve as sigbus (resolve first), then inject vector 20 (#VE) with
 *             KVM_GET/SET_VCPU_EVENTS; the guest handler is a bare iretq
 *   signal+ve the current project path: handler thread reads the event and
 *             signals the vCPU thread, KVM_RUN returns EINTR, the vCPU thread
 *             resolves, injects vector 20 and re-enters
 * Output: p50, mean, p90, p99, max per fault in microseconds.
 *
 * Build and run (as root, needs /dev/kvm, x86-64):
 *   gcc -O2 -Wall -o uffd_sigbus docs/probes/uffd_sigbus.c -lpthread
 *   timeout 300 ./uffd_sigbus [pages-per-round (default 1024) [rounds (default 3)]]
 * (docs/probes/uffd_sigbus.md used `./uffd_sigbus 2048 4`: about 25 s.)
 * Written for the nested kvm_pvm host of the development machines but uses only
 * the raw KVM API, so it runs unchanged on hardware KVM for comparison.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <x86intrin.h>

#ifndef KVM_CAP_MEMORY_FAULT_INFO
#define KVM_CAP_MEMORY_FAULT_INFO 232
#endif
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif

/* Guest-physical layout: the first 16 MiB identity-mapped with 4 KiB pages. */
#define MEM_SIZE (16ul << 20)
#define GDT_GPA 0x1000ul
#define TSS_GPA 0x1100ul
#define TSS_LIMIT 0x70ul
#define IDT_GPA 0x2000ul
#define PML4_GPA 0x3000ul
#define PDPT_GPA 0x4000ul
#define PD_GPA 0x5000ul
#define PT_GPA 0x6000ul /* eight page tables, 0x6000..0xdfff */
#define CODE_GPA 0x10000ul /* +0 touch-read, +0x1000 touch-write, +0x2000 loop-read, +0x3000 loop-write */
#define STUB_GPA 0x20000ul /* 16 bytes per exception vector */
#define KSTACK_TOP 0x40000ul
#define USTACK_TOP 0x50000ul
#define RESULT_GPA 0x100000ul /* per-touch rdtsc deltas, up to 0x300000 */
#define RANGE_GPA 0x400000ul /* discarded pages live here, up to 0xc00000 */
#define RANGE_MAX 2048
#define PORT_DONE 0x10
#define PORT_EXC 0x21
#define VE_VECTOR 20
#define PAGE 4096ul

/* Guest code, assembled by gcc and copied into guest memory. */
__asm__(".pushsection .rodata.guest,\"a\"\n"
	".globl g_tr, g_tr_end, g_tw, g_tw_end, g_lr, g_lr_end, g_lw, g_lw_end\n"
	/* one read of (%rdi), report, spin */
	"g_tr: movq (%rdi), %rax\n outb %al, $0x10\n 1: jmp 1b\n g_tr_end:\n"
	/* one write of %rsi to (%rdi), report, spin */
	"g_tw: movq %rsi, (%rdi)\n outb %al, $0x10\n 1: jmp 1b\n g_tw_end:\n"
	/* rdi=first page, rsi=count, rbx=result array: time each touch */
	"g_lr:\n"
	"1: lfence\n rdtsc\n shlq $32, %rdx\n orq %rdx, %rax\n movq %rax, %r8\n"
	"   movq (%rdi), %r9\n"
	"   lfence\n rdtsc\n shlq $32, %rdx\n orq %rdx, %rax\n subq %r8, %rax\n"
	"   movq %rax, (%rbx)\n addq $8, %rbx\n addq $4096, %rdi\n decq %rsi\n jnz 1b\n"
	"   outb %al, $0x10\n 2: jmp 2b\n g_lr_end:\n"
	"g_lw:\n"
	"1: lfence\n rdtsc\n shlq $32, %rdx\n orq %rdx, %rax\n movq %rax, %r8\n"
	"   movq %rdi, (%rdi)\n"
	"   lfence\n rdtsc\n shlq $32, %rdx\n orq %rdx, %rax\n subq %r8, %rax\n"
	"   movq %rax, (%rbx)\n addq $8, %rbx\n addq $4096, %rdi\n decq %rsi\n jnz 1b\n"
	"   outb %al, $0x10\n 2: jmp 2b\n g_lw_end:\n"
	".popsection\n");
extern const unsigned char g_tr[], g_tr_end[], g_tw[], g_tw_end[];
extern const unsigned char g_lr[], g_lr_end[], g_lw[], g_lw_end[];

struct vm {
	int kvm, fd, cpu, cpl;
	struct kvm_run *run;
	uint8_t *mem;
	struct kvm_sregs sregs; /* restored before every run: an exception leaves CPL0 */
};

static int g_uffd_plain = -1, g_uffd_sigbus = -1;
static _Atomic int g_handler_mode; /* 0 resolve, 1 signal the vCPU thread */
static _Atomic uint64_t g_pending; /* host address the handler saw (signal mode) */
static _Atomic long g_handler_events;
static pthread_t g_vcpu_thread;
static volatile sig_atomic_t g_alarm, g_sigbus_count;
static uint8_t *g_zero_src;
static unsigned long g_tsc_khz;

static double now_s(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
	printf("FATAL: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void on_alarm(int s) { (void)s; g_alarm = 1; }
static void on_usr1(int s) { (void)s; }
static void on_sigbus(int s) { (void)s; g_sigbus_count++; }

static void install_signals(void)
{
	struct sigaction sa = {0};
	sa.sa_handler = on_alarm; /* no SA_RESTART: KVM_RUN returns EINTR */
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_sigbus;
	sigaction(SIGBUS, &sa, NULL);
}

/* ---------------------------------------------------------------- VM setup */

static void write_idt_gate(uint8_t *mem, int vec, uint64_t target)
{
	uint64_t lo = (target & 0xffff) | (0x08ull << 16) | (0x8eull << 40) |
		      (((target >> 16) & 0xffff) << 48);
	uint64_t hi = target >> 32;
	memcpy(mem + IDT_GPA + vec * 16, &lo, 8);
	memcpy(mem + IDT_GPA + vec * 16 + 8, &hi, 8);
}

static void build_guest_tables(uint8_t *mem)
{
	uint64_t *pml4 = (uint64_t *)(mem + PML4_GPA), *pdpt = (uint64_t *)(mem + PDPT_GPA);
	uint64_t *pd = (uint64_t *)(mem + PD_GPA), *pt = (uint64_t *)(mem + PT_GPA);
	pml4[0] = PDPT_GPA | 7;
	pdpt[0] = PD_GPA | 7;
	for (int i = 0; i < 8; i++)
		pd[i] = (PT_GPA + i * PAGE) | 7;
	for (uint64_t j = 0; j < MEM_SIZE / PAGE; j++)
		pt[j] = (j * PAGE) | 7; /* present, writable, user */

	uint64_t gdt[7] = {
		0,
		0x00af9a000000ffffull, /* 0x08 kernel code, 64-bit */
		0x00cf92000000ffffull, /* 0x10 kernel data */
		0x00affa000000ffffull, /* 0x18 user code, 64-bit, DPL3 */
		0x00cff2000000ffffull, /* 0x20 user data, DPL3 */
		TSS_LIMIT | ((TSS_GPA & 0xffffff) << 16) | (0x89ull << 40) |
			(((TSS_GPA >> 24) & 0xff) << 56), /* 0x28 TSS */
		0,
	};
	memcpy(mem + GDT_GPA, gdt, sizeof gdt);
	uint64_t rsp0 = KSTACK_TOP;
	memcpy(mem + TSS_GPA + 4, &rsp0, 8);
	/* An I/O bitmap allowing ports 0..63 (the I/O-permission check here
	 * consults it at CPL3 even with IOPL 3), then the 0xff terminator. */
	uint16_t iomap = 0x68;
	memcpy(mem + TSS_GPA + 0x66, &iomap, 2);
	memset(mem + TSS_GPA + 0x68, 0, 8);
	mem[TSS_GPA + 0x70] = 0xff;

	/* Vector 20 (#VE): iretq. Every other vector: report it on port 0x21. */
	for (int v = 0; v < 256; v++) {
		uint8_t *s = mem + STUB_GPA + v * 16;
		if (v == VE_VECTOR) {
			s[0] = 0x48, s[1] = 0xcf;
		} else {
			s[0] = 0xb8; /* mov $v, %eax */
			memcpy(s + 1, &v, 4);
			s[5] = 0xe7, s[6] = PORT_EXC; /* out %eax, $0x21 */
			s[7] = 0xf4; /* hlt */
			s[8] = 0xeb, s[9] = 0xfd; /* jmp back to hlt */
		}
		write_idt_gate(mem, v, STUB_GPA + v * 16);
	}
	memcpy(mem + CODE_GPA, g_tr, g_tr_end - g_tr);
	memcpy(mem + CODE_GPA + 0x1000, g_tw, g_tw_end - g_tw);
	memcpy(mem + CODE_GPA + 0x2000, g_lr, g_lr_end - g_lr);
	memcpy(mem + CODE_GPA + 0x3000, g_lw, g_lw_end - g_lw);
}

static void vm_open(struct vm *v, int cpl)
{
	v->kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (v->kvm < 0)
		die("open /dev/kvm");
	v->fd = ioctl(v->kvm, KVM_CREATE_VM, 0);
	if (v->fd < 0)
		die("KVM_CREATE_VM");
	v->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (v->mem == MAP_FAILED)
		die("mmap guest RAM");
	madvise(v->mem, MEM_SIZE, MADV_NOHUGEPAGE);
	struct kvm_userspace_memory_region r = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE,
		.userspace_addr = (uintptr_t)v->mem};
	if (ioctl(v->fd, KVM_SET_USER_MEMORY_REGION, &r))
		die("KVM_SET_USER_MEMORY_REGION");
	v->cpu = ioctl(v->fd, KVM_CREATE_VCPU, 0);
	if (v->cpu < 0)
		die("KVM_CREATE_VCPU");
	struct {
		struct kvm_cpuid2 h;
		struct kvm_cpuid_entry2 e[128];
	} cpuid = {.h.nent = 128};
	if (ioctl(v->kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) == 0)
		ioctl(v->cpu, KVM_SET_CPUID2, &cpuid);
	long sz = ioctl(v->kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	v->run = mmap(NULL, sz, PROT_READ | PROT_WRITE, MAP_SHARED, v->cpu, 0);
	if (v->run == MAP_FAILED)
		die("mmap kvm_run");
	build_guest_tables(v->mem);

	struct kvm_sregs s;
	if (ioctl(v->cpu, KVM_GET_SREGS, &s))
		die("KVM_GET_SREGS");
	struct kvm_segment cs = {.base = 0, .limit = 0xffffffff, .selector = cpl ? 0x1b : 0x08,
				 .type = 11, .present = 1, .dpl = cpl ? 3 : 0, .db = 0, .s = 1,
				 .l = 1, .g = 1};
	struct kvm_segment ds = cs;
	ds.selector = cpl ? 0x23 : 0x10, ds.type = 3, ds.l = 0, ds.db = 1;
	s.cs = cs;
	s.ds = s.es = s.fs = s.gs = s.ss = ds;
	struct kvm_segment tr = {.base = TSS_GPA, .limit = TSS_LIMIT, .selector = 0x28, .type = 11,
				 .present = 1, .s = 0};
	s.tr = tr;
	s.gdt.base = GDT_GPA, s.gdt.limit = 7 * 8 - 1;
	s.idt.base = IDT_GPA, s.idt.limit = 256 * 16 - 1;
	s.cr0 = 0x80010033; /* PG WP NE ET MP PE */
	s.cr3 = PML4_GPA;
	s.cr4 = 0x20; /* PAE */
	s.efer = 0x500; /* LME LMA */
	if (ioctl(v->cpu, KVM_SET_SREGS, &s))
		die("KVM_SET_SREGS");
	v->sregs = s, v->cpl = cpl;
}

static void vm_close(struct vm *v)
{
	close(v->cpu), close(v->fd), close(v->kvm);
	munmap(v->mem, MEM_SIZE);
}

static void set_regs(struct vm *v, int cpl, uint64_t rip, uint64_t rdi, uint64_t rsi, uint64_t rbx)
{
	if (cpl != v->cpl || ioctl(v->cpu, KVM_SET_SREGS, &v->sregs))
		die("set_regs: CPL or KVM_SET_SREGS");
	struct kvm_regs r = {0};
	r.rip = rip, r.rdi = rdi, r.rsi = rsi, r.rbx = rbx;
	r.rflags = 0x3002; /* IOPL 3 so that CPL3 may use out; IF clear */
	r.rsp = cpl ? USTACK_TOP : KSTACK_TOP;
	if (ioctl(v->cpu, KVM_SET_REGS, &r))
		die("KVM_SET_REGS");
}

static void inject_ve(struct vm *v)
{
	struct kvm_vcpu_events ev;
	if (ioctl(v->cpu, KVM_GET_VCPU_EVENTS, &ev))
		die("KVM_GET_VCPU_EVENTS");
	ev.exception.injected = 1, ev.exception.pending = 0;
	ev.exception.nr = VE_VECTOR, ev.exception.has_error_code = 0;
	ev.flags = 0;
	if (ioctl(v->cpu, KVM_SET_VCPU_EVENTS, &ev))
		die("KVM_SET_VCPU_EVENTS");
}

static uint64_t *memfault_words(struct vm *v) { return (uint64_t *)((char *)v->run + 32); }

/* ------------------------------------------------------------ userfaultfd */

static int uffd_open(uint64_t features)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		die("userfaultfd");
	struct uffdio_api api = {.api = UFFD_API, .features = features};
	if (ioctl(fd, UFFDIO_API, &api))
		die("UFFDIO_API");
	return fd;
}

static void uffd_register(int fd, void *addr, size_t len)
{
	struct uffdio_register r = {.range = {(uintptr_t)addr, len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
	if (ioctl(fd, UFFDIO_REGISTER, &r))
		die("UFFDIO_REGISTER");
}

static void uffd_unregister(int fd, void *addr, size_t len)
{
	struct uffdio_range r = {(uintptr_t)addr, len};
	if (ioctl(fd, UFFDIO_UNREGISTER, &r))
		die("UFFDIO_UNREGISTER");
}

/* Back one page: the zero page for a read, a fresh zeroed page for a write. */
static void uffd_resolve(int fd, uint64_t hva, int write)
{
	hva &= ~(PAGE - 1);
	int r;
	if (write) {
		struct uffdio_copy c = {.dst = hva, .src = (uintptr_t)g_zero_src, .len = PAGE};
		r = ioctl(fd, UFFDIO_COPY, &c);
	} else {
		struct uffdio_zeropage z = {.range = {hva, PAGE}};
		r = ioctl(fd, UFFDIO_ZEROPAGE, &z);
	}
	if (r && errno != EEXIST)
		die(write ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE");
}

static void *handler_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	struct pollfd p = {fd, POLLIN, 0};
	for (;;) {
		if (poll(&p, 1, -1) <= 0)
			continue;
		struct uffd_msg m;
		if (read(fd, &m, sizeof m) != sizeof m || m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		g_handler_events++;
		uint64_t a = m.arg.pagefault.address & ~(PAGE - 1);
		if (g_handler_mode == 0) {
			uffd_resolve(fd, a, !!(m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE));
		} else {
			g_pending = a;
			pthread_kill(g_vcpu_thread, SIGUSR1);
		}
	}
	return NULL;
}

static int page_present(void *hva)
{
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t e = 0;
	pread(fd, &e, 8, ((uintptr_t)hva / PAGE) * 8);
	close(fd);
	return (int)(e >> 63);
}

/* ------------------------------------------------- part 1: what KVM_RUN says */

struct tcase {
	const char *name;
	int cpl, write, sigbus, signal; /* signal: default mode, handler only signals */
};

static const char *exit_name(uint32_t r)
{
	static char b[32];
	switch (r) {
	case KVM_EXIT_UNKNOWN: return "UNKNOWN";
	case KVM_EXIT_IO: return "IO";
	case KVM_EXIT_MMIO: return "MMIO";
	case KVM_EXIT_HLT: return "HLT";
	case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
	case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
	case KVM_EXIT_INTR: return "INTR";
	case KVM_EXIT_MEMORY_FAULT: return "MEMORY_FAULT";
	case 0xffffffffu: return "unchanged";
	}
	snprintf(b, sizeof b, "%u", r);
	return b;
}

static void print_caps(struct vm *v)
{
	printf("  KVM_CHECK_EXTENSION(MEMORY_FAULT_INFO): /dev/kvm=%d vm=%d\n",
	       ioctl(v->kvm, KVM_CHECK_EXTENSION, KVM_CAP_MEMORY_FAULT_INFO),
	       ioctl(v->fd, KVM_CHECK_EXTENSION, KVM_CAP_MEMORY_FAULT_INFO));
	struct kvm_enable_cap c = {.cap = KVM_CAP_MEMORY_FAULT_INFO, .args = {1}};
	int r1 = ioctl(v->fd, KVM_ENABLE_CAP, &c);
	int e1 = r1 ? errno : 0;
	int r2 = ioctl(v->cpu, KVM_ENABLE_CAP, &c);
	int e2 = r2 ? errno : 0;
	printf("  KVM_ENABLE_CAP(MEMORY_FAULT_INFO, 1): vm -> %d %s, vcpu -> %d %s\n",
	       r1, r1 ? strerror(e1) : "ok", r2, r2 ? strerror(e2) : "ok");
}

static volatile int g_case_done;

/* Reports a KVM_RUN that neither the guest nor SIGALRM brought back. */
static void *watchdog_main(void *arg)
{
	(void)arg;
	for (int s = 1; s <= 11; s++) {
		sleep(1);
		if (g_case_done)
			return NULL;
		if (s == 6 || s == 10)
			printf("  watchdog: %d s in, KVM_RUN has not returned (SIGALRM sent at 5 s); "
			       "uffd events read so far: %ld\n", s, (long)g_handler_events);
	}
	return NULL;
}

static void single_case(const struct tcase *t)
{
	install_signals();
	g_vcpu_thread = pthread_self();
	struct vm v;
	vm_open(&v, t->cpl);
	print_caps(&v);
	uint8_t *page = v.mem + RANGE_GPA;
	memset(page, 0x77, 16 * PAGE); /* populated before registration */
	int fd = uffd_open(t->sigbus ? UFFD_FEATURE_SIGBUS : UFFD_FEATURE_THREAD_ID);
	uffd_register(fd, page, 16 * PAGE);
	if (madvise(page, PAGE, MADV_DONTNEED))
		die("madvise");
	printf("  page gpa 0x%lx discarded (present=%d); uffd %s; guest CPL%d %s\n", RANGE_GPA,
	       page_present(page), t->sigbus ? "UFFD_FEATURE_SIGBUS"
	       : t->signal ? "default (handler thread signals the vCPU thread, never resolves)"
			   : "default (handler thread resolves)",
	       t->cpl, t->write ? "write of 0x1122334455667788" : "read");
	if (!t->sigbus) {
		pthread_t h;
		g_handler_mode = t->signal;
		pthread_create(&h, NULL, handler_main, (void *)(intptr_t)fd);
	}
	set_regs(&v, t->cpl, CODE_GPA + (t->write ? 0x1000 : 0), RANGE_GPA, 0x1122334455667788ull, 0);

	int efaults = 0, mmio_pending = 0;
	long eintr = 0;
	char first[256] = "";
	pthread_t wd;
	pthread_create(&wd, NULL, watchdog_main, NULL);
	alarm(5);
	/* At most 6 KVM_RUN calls, not counting signal kicks (EINTR), which are
	 * re-entered until the guest completes or the alarm fires. */
	for (int attempt = 1; attempt <= 6; attempt++) {
		uint64_t *mf = memfault_words(&v);
		if (!mmio_pending) {
			v.run->exit_reason = 0xffffffffu;
			mf[0] = mf[1] = mf[2] = 0xa5a5a5a5a5a5a5a5ull;
		}
		mmio_pending = 0;
		double t0 = now_s();
		int ret = ioctl(v.cpu, KVM_RUN, 0);
		int err = ret < 0 ? errno : 0;
		double us = (now_s() - t0) * 1e6;
		uint32_t reason = v.run->exit_reason;
		struct kvm_regs g;
		ioctl(v.cpu, KVM_GET_REGS, &g);
		char line[256], mfs[96] = "not written";
		if (mf[0] != 0xa5a5a5a5a5a5a5a5ull || mf[1] != 0xa5a5a5a5a5a5a5a5ull)
			snprintf(mfs, sizeof mfs, "flags=0x%llx gpa=0x%llx size=0x%llx",
				 (unsigned long long)mf[0], (unsigned long long)mf[1], (unsigned long long)mf[2]);
		snprintf(line, sizeof line, "ret=%d errno=%s exit_reason=%s(0x%x) memory_fault=[%s] rip=0x%llx %.0fus",
			 ret, ret < 0 ? strerrorname_np(err) : "0", exit_name(reason), reason,
			 reason == KVM_EXIT_MMIO || reason == KVM_EXIT_IO ? "n/a (union holds mmio/io)" : mfs,
			 (unsigned long long)g.rip, us);
		if (ret < 0 && err == EINTR && !g_alarm && ++eintr > 2) {
			if (eintr == 3)
				printf("  ... (further EINTR returns not printed)\n");
			attempt--;
			continue;
		}
		printf("  KVM_RUN #%d: %s\n", attempt, line);
		if (attempt == 1)
			snprintf(first, sizeof first, "%s", line);
		if (ret < 0 && err == EINTR && g_alarm) {
			printf("  -> no guest progress for 5 s (alarm): blocked or livelocked; %ld uffd events, "
			       "%ld EINTR returns before the alarm\n", (long)g_handler_events, eintr);
			break;
		}
		if (ret < 0 && err == EINTR) {
			printf("  -> signal kick (uffd event read by the handler); re-entering without resolving\n");
			attempt--;
			continue;
		}
		if (ret == 0 && reason == KVM_EXIT_IO && v.run->io.port == PORT_DONE) {
			printf("  -> guest completed the access: rax=0x%llx page present=%d first word=0x%llx\n",
			       (unsigned long long)g.rax, page_present(page),
			       page_present(page) ? (unsigned long long)*(uint64_t *)page : 0ull);
			break;
		}
		if (ret == 0 && reason == KVM_EXIT_IO && v.run->io.port == PORT_EXC) {
			printf("  -> guest exception vector %u\n", *(uint32_t *)((char *)v.run + v.run->io.data_offset));
			break;
		}
		if (ret == 0 && reason == KVM_EXIT_MMIO) {
			printf("  -> MMIO exit: phys_addr=0x%llx len=%u is_write=%u data=0x%llx; page present=%d\n",
			       (unsigned long long)v.run->mmio.phys_addr, v.run->mmio.len, v.run->mmio.is_write,
			       (unsigned long long)*(uint64_t *)v.run->mmio.data, page_present(page));
			if (!v.run->mmio.is_write)
				memset(v.run->mmio.data, 0x5a, 8);
			mmio_pending = 1; /* re-enter to complete the emulated access */
			continue;
		}
		if (ret < 0 && (err == EFAULT || err == EHWPOISON)) {
			if (++efaults == 1) {
				printf("  -> re-entering unchanged (repeatable?)\n");
			} else {
				printf("  -> resolving with %s, re-entering\n", t->write ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE");
				uffd_resolve(fd, (uintptr_t)page, t->write);
			}
			continue;
		}
		printf("  -> unexpected, stop\n");
		break;
	}
	alarm(0);
	g_case_done = 1;
	printf("  SIGBUS signals delivered to the process: %d\n", (int)g_sigbus_count);
	printf("RESULT %-22s first KVM_RUN: %s\n", t->name, first);
	fflush(stdout);
}

static void run_case_in_child(const struct tcase *t)
{
	printf("\n== %s ==\n", t->name);
	fflush(stdout);
	pid_t p = fork();
	if (p == 0) {
		single_case(t);
		_exit(0);
	}
	double t0 = now_s();
	int st = 0, killed = 0;
	for (;;) {
		if (waitpid(p, &st, WNOHANG) == p)
			break;
		if (!killed && now_s() - t0 > 12) {
			printf("  parent: child still running after 12 s, SIGKILL\n");
			kill(p, SIGKILL);
			killed = 1;
		}
		if (killed && now_s() - t0 > 20) {
			printf("  parent: child did not die, giving up on it\n");
			return;
		}
		usleep(20000);
	}
	if (WIFSIGNALED(st))
		printf("RESULT %-22s child killed by signal %d\n", t->name, WTERMSIG(st));
}

/* ------------------------------------------------------ part 2: round trip */

enum { P_NONE, P_PLAIN, P_SIGBUS_OOB, P_SIGBUS, P_SIGBUS_VE, P_SIGNAL_VE, NPATH };
static const char *path_name[NPATH] = {"none", "plain", "sigbus-oob", "sigbus", "sigbus+ve", "signal+ve"};

struct cell {
	double *us;
	long n, exits, memfault_exits, fallback_lookups, handler_events;
	double wall_s;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* One round: discard n pages, touch them all from CPL3. Returns 0 on success. */
static int round_trip(struct vm *v, int path, int write, int n, struct cell *c, int keep)
{
	uint8_t *range = v->mem + RANGE_GPA;
	if (madvise(range, n * PAGE, MADV_DONTNEED))
		die("madvise");
	int fd = path == P_PLAIN || path == P_SIGNAL_VE ? g_uffd_plain
		 : path == P_NONE			 ? -1
							 : g_uffd_sigbus;
	if (fd >= 0)
		uffd_register(fd, range, n * PAGE);
	g_handler_mode = path == P_SIGNAL_VE;
	g_pending = 0;
	long ev0 = g_handler_events, exits = 0, mfx = 0, fb = 0;
	set_regs(v, 3, CODE_GPA + (write ? 0x3000 : 0x2000), RANGE_GPA, n, RESULT_GPA);
	g_alarm = 0;
	alarm(30);
	double t0 = now_s();
	int ok = -1;
	for (;;) {
		v->run->exit_reason = 0xffffffffu;
		int ret = ioctl(v->cpu, KVM_RUN, 0);
		int err = ret < 0 ? errno : 0;
		if (ret == 0 && v->run->exit_reason == KVM_EXIT_IO && v->run->io.port == PORT_DONE) {
			ok = 0;
			break;
		}
		if (ret == 0 && v->run->exit_reason == KVM_EXIT_IO && v->run->io.port == PORT_EXC) {
			printf("  %s: guest exception %u\n", path_name[path],
			       *(uint32_t *)((char *)v->run + v->run->io.data_offset));
			break;
		}
		if (ret < 0 && err == EFAULT && (path == P_SIGBUS || path == P_SIGBUS_VE || path == P_SIGBUS_OOB)) {
			uint64_t gpa;
			if (path == P_SIGBUS_OOB) { /* pages fault once each, in order */
				gpa = RANGE_GPA + exits * PAGE;
			} else if (v->run->exit_reason == KVM_EXIT_MEMORY_FAULT) {
				gpa = memfault_words(v)[1];
				mfx++;
			} else { /* no address from KVM: find it from the guest state */
				struct kvm_regs g;
				ioctl(v->cpu, KVM_GET_REGS, &g);
				struct kvm_translation tr = {.linear_address = g.rdi};
				if (ioctl(v->cpu, KVM_TRANSLATE, &tr) || !tr.valid)
					die("KVM_TRANSLATE");
				gpa = tr.physical_address;
				fb++;
			}
			uffd_resolve(fd, (uintptr_t)v->mem + gpa, write);
			if (path == P_SIGBUS_VE)
				inject_ve(v);
			exits++;
			continue;
		}
		if (ret < 0 && err == EINTR && !g_alarm) {
			uint64_t a = atomic_exchange(&g_pending, 0);
			if (path == P_SIGNAL_VE && a) {
				uffd_resolve(fd, a, write);
				inject_ve(v);
				exits++;
			}
			continue;
		}
		printf("  %s %s: KVM_RUN ret=%d errno=%s exit_reason=%s, stop\n", path_name[path],
		       write ? "write" : "read", ret, ret < 0 ? strerrorname_np(err) : "0",
		       g_alarm ? "(alarm: no progress in 30 s)" : exit_name(v->run->exit_reason));
		break;
	}
	double wall = now_s() - t0;
	alarm(0);
	if (fd >= 0)
		uffd_unregister(fd, range, n * PAGE);
	if (ok || !keep)
		return ok;
	uint64_t *ticks = (uint64_t *)(v->mem + RESULT_GPA);
	for (int i = 0; i < n; i++)
		c->us[c->n++] = ticks[i] * 1000.0 / g_tsc_khz;
	c->exits += exits, c->memfault_exits += mfx, c->fallback_lookups += fb;
	c->handler_events += g_handler_events - ev0;
	c->wall_s += wall;
	/* written pages must hold their own address */
	if (write)
		for (int i = 0; i < n; i++)
			if (*(uint64_t *)(range + i * PAGE) != RANGE_GPA + i * PAGE) {
				printf("  %s write: page %d holds 0x%llx\n", path_name[path], i,
				       (unsigned long long)*(uint64_t *)(range + i * PAGE));
				break;
			}
	return 0;
}

static unsigned long host_tsc_khz(void)
{
	double t0 = now_s();
	uint64_t c0 = __rdtsc();
	while (now_s() - t0 < 0.2)
		;
	return (unsigned long)((__rdtsc() - c0) / (now_s() - t0) / 1000.0);
}

static void part2(int n, int rounds)
{
	install_signals();
	g_vcpu_thread = pthread_self();
	struct vm v;
	vm_open(&v, 3);
	long k = ioctl(v.cpu, KVM_GET_TSC_KHZ, 0);
	unsigned long hk = host_tsc_khz();
	g_tsc_khz = k > 0 ? (unsigned long)k : hk;
	printf("guest TSC %ld kHz (KVM_GET_TSC_KHZ), host TSC %lu kHz (calibrated); using %lu\n", k, hk, g_tsc_khz);
	memset(v.mem + RANGE_GPA, 0x77, RANGE_MAX * PAGE);
	g_uffd_plain = uffd_open(UFFD_FEATURE_THREAD_ID);
	g_uffd_sigbus = uffd_open(UFFD_FEATURE_SIGBUS);
	pthread_t h;
	pthread_create(&h, NULL, handler_main, (void *)(intptr_t)g_uffd_plain);

	static struct cell cells[NPATH][2];
	int failed[NPATH][2] = {{0}};
	for (int p = 0; p < NPATH; p++)
		for (int w = 0; w < 2; w++)
			cells[p][w].us = calloc((size_t)n * rounds, sizeof(double));
	for (int r = 0; r < rounds; r++)
		for (int w = 0; w < 2; w++)
			for (int p = 0; p < NPATH; p++)
				if (!failed[p][w] && round_trip(&v, p, w, n, &cells[p][w], r > 0))
					failed[p][w] = 1;

	printf("\nround trip per touch of a discarded page, guest CPL3, %d pages x %d measured rounds\n", n,
	       rounds - 1);
	printf("%-10s %-5s %6s %6s %7s %7s %8s %8s %8s %8s %8s %9s\n", "path", "op", "faults", "exits",
	       "mf-gpa", "lookup", "p50 us", "mean us", "p90 us", "p99 us", "max us", "wall/flt");
	for (int w = 0; w < 2; w++)
		for (int p = 0; p < NPATH; p++) {
			struct cell *c = &cells[p][w];
			if (failed[p][w] || c->n == 0) {
				printf("%-10s %-5s failed (see above)\n", path_name[p], w ? "write" : "read");
				continue;
			}
			double sum = 0;
			for (long i = 0; i < c->n; i++)
				sum += c->us[i];
			qsort(c->us, c->n, sizeof(double), cmp_double);
			long exits = p == P_PLAIN ? c->handler_events : c->exits;
			printf("%-10s %-5s %6ld %6ld %7ld %7ld %8.1f %8.1f %8.1f %8.1f %8.0f %9.1f\n", path_name[p],
			       w ? "write" : "read", c->n, exits, c->memfault_exits, c->fallback_lookups,
			       c->us[c->n / 2], sum / c->n, c->us[c->n * 9 / 10], c->us[c->n * 99 / 100],
			       c->us[c->n - 1], c->wall_s * 1e6 / c->n);
		}
	printf("(exits: KVM_RUN returns handled per path, uffd events for plain; mf-gpa: exits whose GPA came "
	       "from memory_fault; lookup: GPA found by KVM_GET_REGS + KVM_TRANSLATE; wall/flt: host wall "
	       "time of the round / faults)\n");
	vm_close(&v);
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	int n = argc > 1 ? atoi(argv[1]) : 1024;
	int rounds = argc > 2 ? atoi(argv[2]) : 3;
	if (n < 1 || n > RANGE_MAX || rounds < 2) {
		fprintf(stderr, "usage: %s [pages 1..%d [rounds >= 2]]\n", argv[0], RANGE_MAX);
		return 1;
	}
	g_zero_src = aligned_alloc(PAGE, PAGE);
	memset(g_zero_src, 0, PAGE);

	static const struct tcase cases[] = {
		{"sigbus cpl3 read", 3, 0, 1, 0},
		{"sigbus cpl3 write", 3, 1, 1, 0},
		{"sigbus cpl0 read", 0, 0, 1, 0},
		{"sigbus cpl0 write", 0, 1, 1, 0},
		{"default cpl0 read", 0, 0, 0, 0},
		{"default cpl0 write", 0, 1, 0, 0},
		{"signal cpl3 read", 3, 0, 0, 1},
		{"signal cpl0 read", 0, 0, 0, 1},
	};
	printf("part 1: what KVM_RUN returns for an access to a discarded, uffd-registered page\n");
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		run_case_in_child(&cases[i]);

	printf("\npart 2: round trip\n");
	part2(n, rounds);
	return 0;
}
